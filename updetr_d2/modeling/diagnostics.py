"""Does a detector look at the image? How much of its decoder's output varies with the
image and how much only with the query slot, plus the sizes of what the decoder adds
together (learned query embeddings vs. encoder memory). A fine-tuned detector whose
outputs barely change across images predicts the same boxes everywhere: the symptom a
bad pretraining hand-off shows (issue: UP-DETR's fine-tuned decoder ignoring the image)."""
from typing import Dict, List, Sequence

import torch

__all__ = ["decoder_dependence"]


@torch.no_grad()
def decoder_dependence(model, batched_inputs: Sequence[Dict], batch_size: int = 8) -> Dict[str, float]:
    """On ``batched_inputs`` (Detectron2 test-mapper dicts), with the model in eval mode:

    - ``var_images``: variance of the last decoder layer's output across images, averaged
      over query slots and channels (0: the same output for every image);
    - ``var_queries``: variance across query slots, averaged over images and channels;
    - ``image_share``: var_images / (var_images + var_queries);
    - ``query_norm``: mean L2 norm of the positional queries (learned embeddings);
    - ``memory_norm``: mean L2 norm of the encoder memory tokens (padding excluded).
    """
    if len(batched_inputs) < 2:
        raise ValueError("decoder_dependence needs at least 2 images (a variance across images)")
    was_training = model.training
    model.eval()
    last: List[torch.Tensor] = []
    query_norms, memory_norms = [], []
    try:
        for start in range(0, len(batched_inputs), batch_size):
            state = model.run_phases(list(batched_inputs[start:start + batch_size]))
            last.append(state.decoded.hs[-1].float())
            if state.queries.query_pos is not None:
                query_norms.append(state.queries.query_pos.float().norm(dim=-1).mean())
            memory = state.memory.memory.float()  # [B, S, d]
            keep = ~state.memory.padding_mask if state.memory.padding_mask is not None else None
            norms = memory.norm(dim=-1)
            memory_norms.append(norms[keep].mean() if keep is not None else norms.mean())
    finally:
        model.train(was_training)
    hs = torch.cat(last)  # [N, Q, d]
    var_images = hs.var(dim=0).mean().item()
    var_queries = hs.var(dim=1).mean().item()
    nan = float("nan")
    return {
        "var_images": var_images,
        "var_queries": var_queries,
        "image_share": var_images / (var_images + var_queries) if var_images + var_queries > 0 else nan,
        "query_norm": torch.stack(query_norms).mean().item() if query_norms else nan,
        "memory_norm": torch.stack(memory_norms).mean().item(),
    }
