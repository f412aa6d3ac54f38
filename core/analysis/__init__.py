"""Numbers about posters and models: the tutorial's metric and its baselines (``metrics``), UMAP maps (``maps``), cosine neighbours and genre agreement (``neighbours``)."""
