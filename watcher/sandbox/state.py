"""What every sandbox handler shares, stored on the aiohttp application under SANDBOX_STATE."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

from aiohttp import web

from watcher.sandbox.faults import FaultBook
from watcher.sandbox.mypos_auth import MyposAuth
from watcher.sandbox.oauth_verify import OAuthVerifier
from watcher.sandbox.settings import SandboxSettings
from watcher.sandbox.world import World


@dataclass(frozen=True, slots=True)
class SeedPayloads:
    """The API pages' sample bodies, byte for byte, as served for partner SEED and account 50553500971."""

    mc_account_balance_json: bytes
    mc_account_balance_xml: bytes
    mc_account_balances_json: bytes
    mc_account_balances_xml: bytes
    mypos_balances_json: bytes

    @classmethod
    def load(cls) -> SeedPayloads:
        """Read the seed files shipped in watcher/sandbox/seed/ (blocking: once, at start-up)."""
        folder = resources.files("watcher.sandbox").joinpath("seed")
        return cls(
            mc_account_balance_json=folder.joinpath("mc_account_balance.json").read_bytes(),
            mc_account_balance_xml=folder.joinpath("mc_account_balance.xml").read_bytes(),
            mc_account_balances_json=folder.joinpath("mc_account_balances.json").read_bytes(),
            mc_account_balances_xml=folder.joinpath("mc_account_balances.xml").read_bytes(),
            mypos_balances_json=folder.joinpath("mypos_balances.json").read_bytes(),
        )


@dataclass(frozen=True, slots=True)
class SandboxState:
    """The settings, the simulated world, the injected faults, the signature checker and the myPOS
    tokens and consents."""

    settings: SandboxSettings
    world: World
    faults: FaultBook
    verifier: OAuthVerifier
    seeds: SeedPayloads
    wall_clock: Callable[[], datetime]
    auth: MyposAuth


SANDBOX_STATE = web.AppKey("sandbox_state", SandboxState)
