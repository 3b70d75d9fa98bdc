"""Execute a plan for real (`autosplit run`) and compare it with its prediction
(`autosplit validate`).

launch: checks, then one process per rank (or one rank under torchrun); worker: a rank
process; pipeline: process groups and meshes, the stage, the training loop; layout: every
rank's place and rows, the routes between stages (the order of passes comes from
``autosplit.cost.schedule``, the object the cost model prices); executor: one step of one
rank, its passes (F, B and W, of every chunk it holds) and messages; stage_builder: only this rank's
units, materialised and initialised deterministically; slicing: the stage's slice of the
model's own forward; boundaries: shapes that cross stages; tensor_parallel: which layers split
and how; precision: low-precision weights with fp32 master weights; health: where a
non-finite value first appears; gemm_check: whether the device computes the stage's matrix
products correctly; compute_timer: each rank's compute time per step; data: synthetic
batches; measure: the measured file; validate: predicted vs measured.
"""
