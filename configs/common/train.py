"""Training-loop settings shared by the LazyConfig files (read by updetr_d2.engine.lazy)."""
from updetr_d2.config import default_device

train = dict(
    output_dir="./output",
    init_checkpoint="",
    init_checkpoint_skip=[],  # parameter-name prefixes init_checkpoint does not fill (MODEL.WEIGHTS_SKIP)
    allow_unsafe_checkpoints=False,  # True only for trusted files that pickle arbitrary objects
    max_iter=1000,
    # Mixed precision (updetr_d2/engine/amp.py): bf16 autocast on a CPU that has it, fp16 with a
    # gradient scaler on CUDA unless precision="bfloat16"; inference=True evaluates with it.
    amp=dict(enabled=False, precision="auto", inference=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=500, max_to_keep=3),
    eval_period=0,  # 0: evaluate once, after the last iteration
    log_period=20,
    device=default_device(),
    seed=-1,
)
