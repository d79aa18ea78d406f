"""GPU workers on other machines, through Redis Streams (chosen by ``IMAGINEBOT_REDIS_URL``).

``wire`` names the keys and encodes what travels; ``runner.RedisRunner`` is the bot's side (a
``bot.runner.Runner``); ``worker.RemoteWorker`` is the loop of ``imaginebot worker``.
"""

from bot.remote.runner import RedisRunner
from bot.remote.wire import RemoteConfig, WorkerInfo
from bot.remote.worker import RemoteWorker

__all__ = ["RedisRunner", "RemoteConfig", "RemoteWorker", "WorkerInfo"]
