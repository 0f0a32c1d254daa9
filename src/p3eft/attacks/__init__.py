"""Attacks on ObfuscaTune by its untrusted side (the cloud), to *measure* what it leaks.

Threat model (honest-but-curious cloud, as in the paper, plus public knowledge): the attacker holds
what the untrusted accelerator holds and receives -- the obfuscated weights, every masked activation
and gradient that crosses the enclave <-> cloud boundary -- and knows the public base model of which
the proprietary model is a fine-tune, and its tokenizer. It does not see masks, the enclave's memory
or the data owner's traffic.

* :mod:`~p3eft.attacks.recorder` records the boundary by wrapping the enclave's channel to the cloud;
* :mod:`~p3eft.attacks.victim` builds a victim: public model + a synthetic proprietary delta, a
  session with the settings under attack, and the traffic of a few prompts and one training step;
* :mod:`~p3eft.attacks.tokens` recovers prompt tokens from masked activations (norm and Gram
  matching against the public embedding table, anchors, then Procrustes; paper mode's clear Q/K/V);
* :mod:`~p3eft.attacks.weights` recovers weights (one- and two-sided Procrustes from the obfuscated
  weights alone; known-plaintext recovery of a static mask, from decoded or known tokens);
* :mod:`~p3eft.attacks.structured` recovers weights through the structure of ``blockperm`` (block
  support, per-block Procrustes) and ``kron`` masks (Kronecker labels, nearest Kronecker product);
* :mod:`~p3eft.attacks.static_mask` estimates the static input mask from known plaintext: rows in
  order, or rows matched to known tokens over many calls (the row-mixing defence is aimed at both);
* :mod:`~p3eft.attacks.gradients` reads the loss span (which positions carry labels) off gradients;
* :mod:`~p3eft.attacks.suite` runs them all over modes, mask kinds and defences and writes the table.

The victim's ground truth (tokens, proprietary weights, masks) is used only to *score* an attack.
"""
