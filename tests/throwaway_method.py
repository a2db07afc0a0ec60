"""A throw-away method for tests: SimCLR at a temperature of its own, with one claim over SimCLR.

Everything about it is here, as the design promises for any method; the tests register it
under the key ``foo`` for their own duration.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdclr.methods.base import Claim
from sdclr.methods.simclr import SimCLR
from sdclr.schema import positive, setting


@dataclass(frozen=True)
class FooParams:
    """SimCLR at its own temperature."""

    temperature: float = setting(positive(), "foo's NT-Xent temperature", deviation="foo: τ {ours} instead of {paper}.")


class Foo(SimCLR):
    """SimCLR at a temperature of its own (``foo.temperature``)."""

    name = "foo"
    temperature_key = "foo.temperature"
    reads = (*SimCLR.reads, "foo")
    params_block = ("foo", FooParams)
    claim_source = "a throw-away example"
    claim_heading = "foo should beat SimCLR in kNN accuracy."
    claims = (Claim("simclr", "knn", "accuracy", +1),)

    @classmethod
    def from_params(cls, params, net, num_samples):
        return cls(net, params.foo.temperature)
