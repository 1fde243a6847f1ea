"""Federated training of the network's last layers on Flower: FedAvg or TeAM.

The shared layers (MobileNetV2 ``features[:17]``, ImageNet weights) stay frozen, so every site
computes its images' shared feature maps once and trains only the decoupled layers on them, for
``local-epochs`` per round (SGD, momentum 0.9). Images never leave a site.

- ``fedavg``: every site trains the whole decoupled part (:class:`~edgelearn.federation.training.heads.DenseHead`)
  and Flower's ``FedAvg`` averages it, weighted by the sites' image counts.
- ``team``: first the sites report, per class, their images' mean channel activations (statistics,
  no images); the server selects each class's critical path and decouples the layers
  (:class:`~edgelearn.federation.training.heads.PathHead`); each round a site receives, trains (one-vs-rest:
  each path scores its own class) and returns only its classes' paths, and the server averages each
  path over the sites that have that class.
  Classes named in ``new-classes`` get randomly initialised paths that learn 10x faster.

Both count the bytes of the arrays sent and received each round. ``test-data`` (a folder with a
``test/`` split) gives the server a held-out set to score the global model after every round. The
history goes to ``output`` (JSON), the global model beside it (``model.pt``: strategy, classes,
path sizes and the state of the decoupled layers).
"""
