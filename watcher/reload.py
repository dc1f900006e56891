"""SIGHUP for sources: read the config file again and rebuild every source whose settings changed
(a new consent or token, a new key), so that an account stopped by a revoked consent resumes.

Adding or removing sources, and changing intervals, take a restart: the scheduler's jobs stay as they
were, and the daemon says so.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from watcher.app import Components, StartupError, load_signing_keys
from watcher.config import ConfigError, Settings, load_settings

log = structlog.get_logger("watcher.reload")


async def reload_sources(components: Components, config_path: Path) -> Settings | None:
    """Rebuild the sources whose config changed; returns the new settings, None when rejected."""
    try:
        settings = await asyncio.to_thread(load_settings, config_path)
    except ConfigError as exc:
        log.error("config reload rejected; the sources stay as they are", error=str(exc))
        return None
    current = {cfg.name: cfg for cfg in components.settings.sources}
    wanted = {cfg.name: cfg for cfg in settings.sources}
    changed = [cfg for name, cfg in wanted.items() if name in current and cfg != current[name]]
    try:
        keys = await load_signing_keys(settings, changed)
    except StartupError as exc:
        log.error("config reload rejected; the sources stay as they are", error=str(exc))
        return None
    for poller in components.pollers:
        cfg = wanted.get(poller.source.name)
        if cfg is None:
            log.warning("source removed from the config: restart to stop it", source=poller.source.name)
        elif cfg in changed:
            if cfg.interval != current[cfg.name].interval:
                log.warning("interval changes take a restart", source=cfg.name)
            poller.source = components.make_source(cfg, keys.get(cfg.name))
            log.info("source rebuilt from the reloaded config", source=cfg.name)
    for name in wanted.keys() - current.keys():
        log.warning("new source in the config: restart to start polling it", source=name)
    components.settings = components.settings.model_copy(
        update={"sources": [wanted.get(c.name, c) for c in components.settings.sources]}
    )
    return settings
