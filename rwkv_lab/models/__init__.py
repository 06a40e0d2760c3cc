"""Model generations behind one seam: a package per generation and the registry the suite asks (see protocol.py)."""
