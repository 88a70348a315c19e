"""Training infrastructure shared by the trainers, and the ELECTRA pretraining loop.

    checkpointing  Orbax checkpoints (the only Orbax importer): Checkpointer, load_params, save_params, load_model
    distributed    maybe_initialize(): jax.distributed for TPU pods, SLURM and explicit coordinators
    optim          AdamW as ELECTRA uses it, warmup x linear decay, layer-wise LR decay
    metrics        MetricWriter (TensorBoard + metrics.jsonl), Throughput, console lines
    flops          analytical FLOPs as the ELECTRA paper counts them, MFU
    pretrain_lib   masking, the replaced-token-detection train step and loop; pretrain is its binary
"""
