class Shareable(dict):
    """nvflare.apis.shareable.Shareable is a dict subclass: '__headers__' plus content."""
