"""A small, locally built tokenizer for the tiny MAIRA-2-architecture model (no downloads).

Byte-level BPE trained in well under a second on a built-in corpus of chest X-ray report language and
MAIRA-2's prompt wording, so any text tokenizes (no ``<unk>``). It knows MAIRA-2's special tokens:
``<image>``, the grounding tokens ``<obj> </obj> <box> </box>`` and 100 x-bins / 100 y-bins.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

IMAGE_TOKEN = "<image>"
GROUNDING_TOKENS = ["<obj>", "</obj>", "<box>", "</box>"]
X_BINS = [f"<x{i}>" for i in range(100)]
Y_BINS = [f"<y{i}>" for i in range(100)]
BASE_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
ADDED_SPECIALS = [IMAGE_TOKEN, *GROUNDING_TOKENS, *X_BINS, *Y_BINS]

_CORPUS = """
You are an expert radiology assistant tasked with interpreting a chest X-ray study.
USER: Given the current frontal image only. Given the current frontal image, the current lateral image
and the prior frontal image. PRIOR_REPORT: Provide a description of the findings in the radiology study
in comparison to the prior frontal image. Provide a description of the findings in the radiology image.
INDICATION: TECHNIQUE: COMPARISON: N/A. FINDINGS: IMPRESSION: ASSISTANT: Repeat the finding as a
grounded phrase. Each finding should be followed by its bounding box.
History of shortness of breath. Evaluate for pneumonia. Cough and fever. Chest pain. Status post
pacemaker placement. Line placement. Endotracheal tube position. Dyspnea. Trauma. Preoperative.
PA and lateral views of the chest. Single portable AP view of the chest. Frontal and lateral chest
radiographs. Comparison is made to the prior study. None available.
The heart is enlarged. The heart size is normal. Moderate cardiomegaly. Mild enlargement of the cardiac
silhouette. The cardiomediastinal silhouette is within normal limits. The mediastinal contours are
normal. There is a small left pleural effusion. Moderate right pleural effusion with adjacent
atelectasis. Large bilateral pleural effusions. No pleural effusion. Blunting of the costophrenic angle.
There is a small right apical pneumothorax. Large left pneumothorax. No pneumothorax. The visceral pleural
line is seen. Patchy opacity in the right lower lobe, concerning for pneumonia. Focal consolidation in
the left upper lobe. Airspace opacity. No focal consolidation. The lungs are clear. Lungs are well
expanded. Low lung volumes. Pulmonary vascular congestion. Interstitial edema.
A left chest wall pacemaker with leads terminating in the right atrium and right ventricle. Dual-lead
pacing device. Implantable cardioverter-defibrillator. Endotracheal tube terminates 4 cm above the carina.
Enteric tube courses below the diaphragm, tip in the stomach. Nasogastric tube. Right internal jugular
central venous catheter with tip in the superior vena cava. Left subclavian line, tip at the cavoatrial
junction. Support devices are unchanged in position. No acute cardiopulmonary process.
Interval increase in the left effusion. Decreased right pleural effusion. New right pneumothorax.
Resolved opacity. Unchanged cardiomegaly. Stable. Improved. Worsened. Possible small effusion. Cannot
exclude a small pneumothorax. May represent atelectasis. Likely. Probable. Suspicious for. Compared to
the prior radiograph. There has been interval placement of a pacemaker. Osseous structures are intact.
Degenerative changes of the thoracic spine. Left right upper lower middle lobe base apex bilateral.
0 1 2 3 4 5 6 7 8 9 cm mm .,:;()-/
"""


def _train_bpe(lines: Sequence[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=BASE_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_special_tokens(ADDED_SPECIALS)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return tok


def _wrap(tok: Tokenizer, padding_side: str) -> PreTrainedTokenizerFast:
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side=padding_side,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, *GROUNDING_TOKENS]})
    return fast


def corpus_lines() -> list[str]:
    """The built-in corpus (chest X-ray report language + MAIRA-2 prompt wording), one line each."""
    return [line for line in _CORPUS.splitlines() if line.strip()]


@lru_cache(maxsize=4)
def _train(vocab_size: int) -> str:
    return _train_bpe(corpus_lines() * 4, vocab_size).to_str()


def build_tiny_tokenizer(vocab_size: int = 768, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """Build the tiny model's tokenizer locally (deterministic; ~0.1 s).

    ``vocab_size`` counts the BPE vocabulary; MAIRA-2's 204 added tokens come on top
    (``len(tokenizer)`` is the embedding size to use).
    """
    return _wrap(Tokenizer.from_str(_train(vocab_size)), padding_side)


def train_tokenizer(
    lines: Sequence[str], vocab_size: int = 1024, padding_side: str = "left"
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``lines`` (e.g. ``[*corpus_lines(), *reports]``) with MAIRA-2's
    special tokens, exactly as :func:`build_tiny_tokenizer` is built."""
    return _wrap(_train_bpe(list(lines), vocab_size), padding_side)
