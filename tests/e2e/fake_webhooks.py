"""Interaction responses: the callback route and the interaction webhook (``@original``, followups).

Discord's rules, as the bot meets them:

* one callback per interaction: a second one is 400 ``40060 Interaction has already been acknowledged.``;
* a callback later than the deadline (3 s) is 404 ``10062 Unknown interaction``;
* a deferred response (type 5) creates a loading placeholder; the first ``PATCH @original`` or the
  first followup fills it in (keeping the defer's ephemeral flag);
* a component response of type 6/7 makes the clicked message the ``@original``;
* a followup before any response is 404 ``10015 Unknown Webhook``;
* an expired token is 401 ``50027 Invalid Webhook Token`` on every webhook route.
"""

from __future__ import annotations

import asyncio

from tests.e2e.fake_models import JSON
from tests.e2e.fake_rest import MessageEvents, Reply, RestRequest, Router
from tests.e2e.fake_state import EPHEMERAL, LOADING, DiscordError, DiscordState, InteractionState, unknown

APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE = 2, 3, 4
PONG, CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE, UPDATE_MESSAGE = 1, 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9


class InteractionRoutes:
    """``POST /interactions/{id}/{token}/callback`` and ``/webhooks/{application_id}/{token}/...``.

    Args:
        state: the store.
        events: sends message events for what the responses create.
        deadline: seconds within which the first callback must arrive.
    """

    def __init__(self, state: DiscordState, events: MessageEvents, *, deadline: float) -> None:
        self._state = state
        self._events = events
        self.deadline = deadline

    def register(self, router: Router) -> None:
        router.add("POST", "/interactions/{interaction_id}/{token}/callback", self.callback, auth=False)
        router.add("POST", "/webhooks/{application_id}/{token}", self.followup, auth=False)
        for method, handler in (("GET", self.get), ("PATCH", self.edit), ("DELETE", self.delete)):
            router.add(method, "/webhooks/{application_id}/{token}/messages/{message_id}", handler, auth=False)

    # -- callback ----------------------------------------------------------------------------

    async def callback(self, request: RestRequest) -> Reply:
        interaction = self._state.interactions.get(request.snowflake("interaction_id"))
        if interaction is None or interaction.record.token != request.params["token"]:
            raise DiscordError(404, 10062, "Unknown interaction")
        age = asyncio.get_running_loop().time() - interaction.created_at
        if interaction.token_expired or (not interaction.acknowledged and age > self.deadline):
            raise DiscordError(404, 10062, "Unknown interaction")
        if interaction.acknowledged:
            raise DiscordError(400, 40060, "Interaction has already been acknowledged.")
        body = request.json or {}
        response_type = int(body.get("type", 0))
        self._check_type(interaction, response_type)
        # Acknowledge before any await, so a concurrent second callback sees it.
        interaction.response_type = response_type
        message = await self._respond(interaction, response_type, body.get("data") or {}, request)
        if not request.flag("with_response"):
            return Reply(204)
        return Reply(body=self._callback_payload(interaction, response_type, message))

    @staticmethod
    def _check_type(interaction: InteractionState, response_type: int) -> None:
        allowed = {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL}
        if interaction.record.type == MESSAGE_COMPONENT:
            allowed |= {DEFERRED_UPDATE, UPDATE_MESSAGE}
        if interaction.record.type == AUTOCOMPLETE:
            allowed = {AUTOCOMPLETE_RESULT}
        if response_type not in allowed:
            errors = {"type": {"_errors": [{"code": "INTERACTION_RESPONSE_TYPE_INVALID", "message": "Invalid type"}]}}
            raise DiscordError(400, 50035, "Invalid Form Body", errors)

    async def _respond(
        self, interaction: InteractionState, response_type: int, data: JSON, request: RestRequest
    ) -> JSON | None:
        record = interaction.record
        if response_type in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            ephemeral = int(data.get("flags") or 0) & EPHEMERAL
            if response_type == DEFERRED_CHANNEL_MESSAGE:
                data, extra = {}, LOADING | ephemeral
            else:
                extra = 0
            message_type = 20 if record.type == APPLICATION_COMMAND else 0
            message = self._state.create_message(
                record.channel_id,
                data,
                request.uploads,
                message_type=message_type,
                extra_flags=extra,
                interaction=record,
            )
            interaction.original_message_id = int(message["id"])
            await self._events.emit("MESSAGE_CREATE", message)
            return message
        if response_type in (DEFERRED_UPDATE, UPDATE_MESSAGE) and record.message_id is not None:
            interaction.original_message_id = record.message_id
            if response_type == DEFERRED_UPDATE:
                return None
            message = self._state.edit_message(record.message_id, data, request.uploads)
            await self._events.emit("MESSAGE_UPDATE", message)
            return message
        return None  # autocomplete results and modals create nothing

    def _callback_payload(self, interaction: InteractionState, response_type: int, message: JSON | None) -> JSON:
        summary: JSON = {"id": str(interaction.record.id), "type": interaction.record.type}
        resource: JSON = {"type": response_type}
        if message is not None:
            summary["response_message_id"] = message["id"]
            summary["response_message_loading"] = bool(message["flags"] & LOADING)
            summary["response_message_ephemeral"] = bool(message["flags"] & EPHEMERAL)
            resource["message"] = message
        return {"interaction": summary, "resource": resource}

    # -- webhook -----------------------------------------------------------------------------

    def _interaction(self, request: RestRequest) -> InteractionState:
        if request.snowflake("application_id") != self._state.application_id:
            raise unknown("Webhook", 10015)
        return self._state.interaction_by_token(request.params["token"])

    def _message_id(self, interaction: InteractionState, request: RestRequest) -> int:
        raw = request.params["message_id"]
        if raw == "@original":
            if interaction.original_message_id is None:
                raise unknown("Message", 10008)
            return interaction.original_message_id
        message_id = request.snowflake("message_id")
        if message_id != interaction.original_message_id and message_id not in interaction.followup_ids:
            raise unknown("Message", 10008)
        return message_id

    async def followup(self, request: RestRequest) -> Reply:
        interaction = self._interaction(request)
        if not interaction.acknowledged:
            raise unknown("Webhook", 10015)
        payload = request.json or {}
        if not (payload.get("content") or payload.get("embeds") or payload.get("components") or request.uploads):
            raise DiscordError(400, 50006, "Cannot send an empty message")
        original = self._state.messages.get(interaction.original_message_id or 0)
        if original is not None and original["flags"] & LOADING:
            # The first followup after a defer fills in the "thinking" placeholder.
            message = self._state.edit_message(int(original["id"]), payload, request.uploads)
            await self._events.emit("MESSAGE_UPDATE", message)
        else:
            record = interaction.record
            extra = int(payload.get("flags") or 0) & EPHEMERAL
            message = self._state.create_message(
                record.channel_id, payload, request.uploads, extra_flags=extra, interaction=record
            )
            interaction.followup_ids.append(int(message["id"]))
            await self._events.emit("MESSAGE_CREATE", message)
        return Reply(body=message) if request.flag("wait") else Reply(204)

    async def get(self, request: RestRequest) -> Reply:
        interaction = self._interaction(request)
        return Reply(body=self._state.message(self._message_id(interaction, request)))

    async def edit(self, request: RestRequest) -> Reply:
        interaction = self._interaction(request)
        message_id = self._message_id(interaction, request)
        message = self._state.edit_message(message_id, request.json or {}, request.uploads)
        await self._events.emit("MESSAGE_UPDATE", message)
        return Reply(body=message)

    async def delete(self, request: RestRequest) -> Reply:
        interaction = self._interaction(request)
        message = self._state.delete_message(self._message_id(interaction, request))
        await self._events.emit("MESSAGE_DELETE", message)
        return Reply(204)
