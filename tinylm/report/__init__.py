"""Watching and describing runs: the metrics file a training run writes (metrics.py), loss
curves drawn from it (plot.py), the model card of a model file (card.py), and how much of a
model's output is copied verbatim from its training text (copying.py). Reads what training and
the model file leave behind; never changes a model."""
