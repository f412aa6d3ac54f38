"""``python -m core``: the pipeline commands (``main``) and the data-acquisition commands (``acquire``)."""
