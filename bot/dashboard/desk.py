"""StoredDesk: what :class:`bot.moderation.Moderation` needs of the service, for the dashboard's process.

The dashboard holds no scheduler and no worker. A job it queues (the rerun of an accepted appeal) is
only written to the shared database as ``queued``; the bot's poller picks it up. A decision's outcome
is posted by the bot from the ``reviews`` outbox (``delivered_at``), so :meth:`StoredDesk.notify`
does nothing. Cancelling and waiting need the running service: the dashboard does not offer them.
"""

from __future__ import annotations

from collections.abc import Callable

from bot.errors import BannedError, NotAllowedError
from bot.guild_config import GuildConfig, GuildConfigStore
from bot.jobs import Job, JobRequest
from bot.storage import Storage


class StoredDesk:
    """A :class:`bot.moderation.JobDesk` over the shared database alone.

    Args:
        storage: the open database the bot also uses.
        guild_configs: the servers' settings (cached briefly: see :class:`GuildConfigStore`).
        pseudonym: a member id's keyed pseudonym, under which bans outlive /privacy delete.
    """

    def __init__(self, storage: Storage, guild_configs: GuildConfigStore, pseudonym: Callable[[str], str]) -> None:
        self._storage = storage
        self._configs = guild_configs
        self._pseudonym = pseudonym

    @property
    def storage(self) -> Storage:
        return self._storage

    async def guild_config(self, guild_id: str) -> GuildConfig:
        return await self._configs.load(guild_id)

    async def submit(self, request: JobRequest, *, enforce_caps: bool = True, prechecked: bool = False) -> Job:
        """Persist the request as a ``queued`` job; the bot process schedules it.

        Only moderators' reruns come through here (caps off, prompt judged already); the bot still
        judges every image of the run.
        """
        if enforce_caps or not prechecked:
            raise NotAllowedError("The dashboard only queues the reruns of accepted appeals.")
        job = Job.new(request)
        await self._storage.insert_job(job)
        return job

    def notify(self, job: Job) -> None:
        """Nothing to do here: the bot posts decisions from the reviews outbox."""

    async def cancel(self, job_id: str, *, actor_id: str | None = None) -> Job:
        raise NotAllowedError("Cancelling a job needs the bot: use /cancel in Discord.")

    async def wait(self, job_id: str) -> Job:
        raise NotAllowedError("Waiting for a job needs the bot.")

    async def check_not_banned(self, guild_id: str, user_id: str) -> None:
        ban = await self._storage.active_ban(guild_id, (user_id, self._pseudonym(user_id)))
        if ban is not None:
            raise BannedError(ban)
