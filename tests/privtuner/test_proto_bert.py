"""The encrypted BERT behind the protocol: a data owner and a model owner run one encrypted forward and
one SGD step on a very small BERT through the roles; logits and the adapter after the step equal the
approximate twin's within 1e-2 (the issue's verify tolerance), and the transcript audit finds nothing
the model owner should not have seen. (That a networked run equals an in-process one is a property of
the protocol, checked with a faster model in test_proto_roles.py and test_proto_net.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from p3eft.channel import InProcessChannel
from p3eft.privtuner import audit
from p3eft.privtuner.adapter import peft_names
from p3eft.privtuner.roles import DataOwner, DataOwnerConfig, ModelOwner
from p3eft.privtuner.toy import calibrated
from p3eft.privtuner.twin import Twin
from p3eft.privtuner.wiring import BertBackend, BertCodec

LR = 0.5
TEXT, LABEL = "a fine film", 1


def _run(channel) -> tuple[np.ndarray, dict[str, np.ndarray], DataOwner, list]:
    rec = audit.RecordingChannel(channel)
    do = DataOwner(rec, BertCodec, DataOwnerConfig(lr=LR, record_decryptions=True))
    do.train_step([(TEXT, LABEL)])
    z = do.last_step_logits[0]
    adapter = do.decrypt_adapter()
    do.close()
    return z, adapter, do, rec.transcript


@pytest.mark.slow
def test_encrypted_bert_through_the_protocol_equals_twin():
    model, report, params, _ = calibrated()
    backend = BertBackend(model.cfg, model=model, calibration=report, init_params=params)
    z_local, a_local, do, transcript = _run(InProcessChannel(ModelOwner(backend)))
    # the twin: same example (tokenised by the data owner's codec), same initial adapter, same step
    twin = Twin(model, report.fns)
    ex = do.codec.example(TEXT, LABEL)
    _, z_twin, grads = twin.gradients(ex, params)
    hs = report.fns.head_std  # the data owner's export folds the head's standardization back
    after = peft_names(model.plain_params(Twin.sgd(params, grads, LR), hs))
    assert np.abs(z_local - z_twin).max() <= 1e-2
    assert max(np.abs(a_local[k] - after[k]).max() for k in after) <= 1e-2
    assert max(np.abs(after[k] - peft_names(model.plain_params(params, hs))[k]).max() for k in after) > 1e-3
    verdict = audit.summary(transcript, [d.values for d in do.decryptions])
    assert verdict["model_owner_saw_plaintext"] is False, verdict
    assert do.ledger.refresh_round_trips > 0
