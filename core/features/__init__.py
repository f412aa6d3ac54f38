"""VGG16 features: which weights (``weights``), the network (``extractor``), the on-disk store (``store``), extraction into it (``pipeline``) and the views models train on (``views``)."""
