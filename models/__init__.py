"""Loading and running models: formats, registry, device choice, plaintext evaluation.

Public modules: :mod:`models.formats` (sniffing, pickle refusal, safe tar extraction),
:mod:`models.architectures` (registry), :mod:`models.engine` (``LoadedModel``,
``load_model``), :mod:`models.device`, :mod:`models.hub` (offline MiniLM),
:mod:`models.datasets` (``.npz``), :mod:`models.evaluation` and :mod:`models.manifest`.
"""
