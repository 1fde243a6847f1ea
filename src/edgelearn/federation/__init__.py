"""Federation on Flower: two pairs of Flower apps, each with its run config in a ``pyproject.toml`` beside it.

- :mod:`~edgelearn.federation.knowledge`: sites exchange knowledge packages (records, never images or
  gradients), merged on the server with :func:`edgelearn.knowledge.merge_packages`.
- :mod:`~edgelearn.federation.training`: sites train the network's last layers together (FedAvg or TeAM).

:func:`edgelearn.federation.deploy.federate` runs either as real processes (a SuperLink, one SuperNode per site).
"""
