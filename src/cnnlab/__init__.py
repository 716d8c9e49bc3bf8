"""cnnlab: a laboratory for convolutional networks.

Train, inspect and diagnose CNNs, and run studies that answer the classic
questions about them with measured evidence. The package is layered (see
docs/architecture.md): data, augment, models, train, diagnose, inspect,
report, lab, cli; a lower layer never imports a higher one.
"""

__version__ = "0.1.0"
