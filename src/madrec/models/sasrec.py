"""sasrec: SASRec over item ids with full-softmax cross-entropy (the strongest published variant).

Causal self-attention over the history's item ids; the state after item t scores every item
in the catalogue as item t+1 (tied item embeddings), trained with cross-entropy over all
items at every position of a row. Each item is its own one-token "SID" (digit = item index,
codebook = the catalogue), so the shared tokens, training loop, checkpoints and decoder apply
unchanged: a beam search over one digit is an exact top-K over every item. Positions are
rotary (relative) like the other two models rather than SASRec's learned absolute embedding.
"""

from __future__ import annotations

from madrec.models import Recommender, register, tiger

# the same causal network and next-token loss as tiger; only the tokens differ (uses_sids=False)
RECOMMENDER = register(
    Recommender("sasrec", uses_sids=False, build_network=tiger.build_network, build_objective=tiger.build_objective)
)
