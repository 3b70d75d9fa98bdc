"""autosplit: automatic parallel-strategy search for heterogeneous accelerator clusters.

The pipeline of the tool, one folder per concern:

- ``chips``    — the chip library (``profiles/<chip>/chip.yaml``): what each accelerator can do.
- ``cluster``  — the cluster description (YAML): nodes, links, how vendors reach each other.
- ``model``    — model ingestion: build a user's model on the meta device, find the partition
  unit and measure each layer (parameters, FLOPs, activations, boundary bytes).
- ``cost``     — the cost model: per-layer time per chip, communication, memory, pipeline time.
- ``search``   — the three-level search tree (model → stages → layers → devices).
- ``plan``     — the plan JSON (schema, I/O, validation, re-costing).
- ``report``   — the HTML report, the schedule replay and the terminal summary.
- ``export``   — configurations for Megatron-LM, torchtitan, DeepSpeed and Kubernetes (HAMi).
- ``runtime``  — the reference runtime (``torch.distributed.pipelining``) and validation.
- ``profiler`` — measured per-layer costs and chip calibration, the profile store, importers.
- ``bench``    — the plan-quality regression suite.
- ``protocols``— the small interfaces between those parts (``LayerCostProvider``).
- ``cli``      — the ``autosplit`` command.
"""

__version__ = "0.1.0"
