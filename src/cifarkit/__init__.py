"""cifarkit: train, evaluate, explain and serve CIFAR-10 image classifiers."""

__version__ = "0.2.0"
