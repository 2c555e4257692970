"""Studies in: the Study value, readers, phantoms, the finding labeler."""

from sae_rad_ext.data.study import FINDINGS, Study

__all__ = ["FINDINGS", "Study"]
