"""One module per job type; each defines a `Job` subclass (see `base.py`)."""
