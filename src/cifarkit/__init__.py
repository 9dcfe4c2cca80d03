"""cifarkit: train, evaluate, explain and serve CIFAR-10 image classifiers."""
__version__ = "0.1.0"
