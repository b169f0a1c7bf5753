class FLContext(object):
    """nvflare.apis.fl_context.FLContext: state {model, props, logger}."""
