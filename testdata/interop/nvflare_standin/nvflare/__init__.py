# A minimal stand-in for the nvflare package (not installed here): just the
# classes NVFlare 2.0 pickles on the wire, with their public layouts.
