"""Test-only stand-in for ``sae_rad_ext.adapters.HookedMaira2`` (used only while that class is missing).

Exposes what sae_rad_ext.activations / training / cache use: ``run_with_cache`` (from HF hidden states),
``run_with_hooks`` (forward hooks on the decoder layers), ``__call__`` -> logits, ``cfg``, ``tokenizer``.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import torch
from sae_rad_ext.adapters import tiny_maira2


class StandInHookedMaira2(torch.nn.Module):
    def __init__(self, hf, tok):
        super().__init__()
        self.hf, self.tokenizer = hf, tok
        tc = hf.config.text_config
        self.hf_config = hf.config
        self.cfg = SimpleNamespace(d_model=tc.hidden_size, n_layers=tc.num_hidden_layers, model_name="tiny-maira2")

    @classmethod
    def tiny(cls, seed: int = 0):
        hf, tok = tiny_maira2(seed)
        return cls(hf, tok)

    def _layers(self):
        return self.hf.model.language_model.layers

    @torch.no_grad()
    def run_with_cache(self, input_ids, pixel_values=None, attention_mask=None, names_filter=None,
                       stop_at_layer=None, **_):
        out = self.hf(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask,
                      output_hidden_states=True)
        cache = {}
        for name in names_filter or []:
            m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", name)
            assert m, name
            cache[name] = out.hidden_states[int(m.group(1)) + 1]
        return out.logits, cache

    def forward(self, input_ids, pixel_values=None, attention_mask=None, **_):
        return self.hf(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits

    @torch.no_grad()
    def run_with_hooks(self, input_ids, fwd_hooks=(), pixel_values=None, attention_mask=None, **_):
        handles = []
        for name, fn in fwd_hooks:
            L = int(re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", name).group(1))

            def hook(mod, args, output, fn=fn):
                h = output[0] if isinstance(output, tuple) else output
                new = fn(h, hook=None)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handles.append(self._layers()[L].register_forward_hook(hook))
        try:
            return self.forward(input_ids, pixel_values, attention_mask)
        finally:
            for h in handles:
                h.remove()
