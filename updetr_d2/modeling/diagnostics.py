"""Does a detector look at the image? How much of its decoder's output varies with the
image and how much only with the query slot, how alike the encoder's tokens of one image
are, and the sizes of what the decoder adds together (learned query embeddings vs. encoder
memory). A detector whose outputs barely change across images predicts the same boxes
everywhere, and an encoder whose tokens all point one way gives its decoder little to tell
positions apart by: the two symptoms of a pretraining that hands off a collapsed model."""
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
    - ``memory_norm``: mean L2 norm of the encoder memory tokens (padding excluded);
    - ``memory_cosine``: mean |cosine similarity| between two tokens of the same image's
      memory (padding excluded; 1: every position says the same thing);
    - ``memory_cross_cosine``: the same between a token of one image and a token of
      another (images paired within a batch; 1: every image gives the same tokens, e.g. an
      encoder that has learned to output where a token is rather than what it shows).
    """
    if len(batched_inputs) < 2:
        raise ValueError("decoder_dependence needs at least 2 images (a variance across images)")
    was_training = model.training
    model.eval()
    last: List[torch.Tensor] = []
    query_norms, memory_norms, cosines, cross = [], [], [], []
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
            tokens = [memory[i][keep[i]] if keep is not None else memory[i] for i in range(memory.shape[0])]
            cosines += [mean_abs_cosine(t) for t in tokens]
            if len(tokens) > 1:
                cross += [mean_abs_cosine(t, tokens[(i + 1) % len(tokens)]) for i, t in enumerate(tokens)]
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
        "memory_cosine": torch.stack(cosines).mean().item(),
        "memory_cross_cosine": torch.stack(cross).mean().item() if cross else nan,
    }


def mean_abs_cosine(tokens: torch.Tensor, others: torch.Tensor = None, max_tokens: int = 1024) -> torch.Tensor:
    """Mean |cos| over pairs of distinct rows of ``tokens`` [S, d], or, given ``others``
    [S', d], over every (row of tokens, row of others) pair. Each side is first cut to an
    evenly spaced subset of at most ``max_tokens`` rows (the pair matrix of a large level
    is S^2)."""
    def unit(x):
        if x.shape[0] > max_tokens:
            x = x[torch.linspace(0, x.shape[0] - 1, max_tokens).long()]
        return torch.nn.functional.normalize(x, dim=-1)

    a = unit(tokens)
    if others is not None:
        return (a @ unit(others).T).abs().mean()
    cos = (a @ a.T).abs()
    n = cos.shape[0]
    return (cos.sum() - cos.diagonal().sum()) / max(n * (n - 1), 1)
