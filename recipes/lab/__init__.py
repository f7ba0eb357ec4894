"""The loss lab (experiments/loss_lab.py): every policy loss on one frozen batch, from identical weights,
side by side. config.py (settings), recorded.py (a --record-batches folder read back), start.py (the batch
and the weights every loss starts from), roster.py (the seven losses as learner stages), terms.py (one
micro-batch's loss and its per-token weights d loss / d logp), clipping.py (which tokens each loss clips),
scoring.py (a model's logprobs and next-token distributions on the batch), trial.py (k updates of one
loss, its probe), analysis.py (gradient cosines, where the weight goes), mismatch.py (rollout vs learner
logprobs by source, the TIS weights), replay.py (a recorded step replayed), plots.py (the PNGs), run.py
(the whole lab)."""
