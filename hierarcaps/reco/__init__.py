"""RECO: refine a frozen encoder's embeddings with image-text pairs retrieved from an external memory."""
