"""remembrall: a stream pipeline that keeps a small specialized model accurate on the scene it watches."""

__version__ = "0.1.0"
