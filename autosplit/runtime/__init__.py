"""Execute a plan for real (`autosplit run`) and compare it with its prediction
(`autosplit validate`).

launch: checks, then one process per rank (or one rank under torchrun); worker: a rank
process; pipeline: process groups, stage, schedule, training loop; stage_builder: only this
rank's units, materialised and initialised deterministically; boundaries: shapes that cross
stages; precision: low-precision weights with fp32 master weights; outputs: the last stage's
logits freed once the loss has used them; health: where a non-finite value first appears;
gemm_check: whether the device computes the stage's matrix products correctly; compute_timer:
each rank's compute time per step; data: synthetic batches; measure: the measured file;
validate: predicted vs measured.
"""
