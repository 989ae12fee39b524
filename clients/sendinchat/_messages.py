"""ChatService on the Client, what rooms hold: messages, read marks, payments and payment requests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import datetime

from sendinchat._base import ClientBase, request_id_or_new, timestamp
from sendinchat.v1 import chat_pb2


class MessagesMixin(ClientBase):
    """The ChatService message and payment RPCs, one method each (snake_case of the RPC's name).

    Writes take an optional client_message_id or request_id; without one a UUID is made, and
    ABORTED or UNAVAILABLE is retried with that same id, so nothing is posted or paid twice.
    """

    async def send_message(
        self, room_id: str, text: str, *, client_message_id: str | None = None
    ) -> chat_pb2.Message:
        """Post a text message (the Connect stream can post too: ChatConnection.send).

        Args:
            room_id: The room's UUID.
            text: 1-4000 characters.
            client_message_id: 1-64 characters that make retries safe; made for you when omitted.

        Returns:
            The stored message, with its sequence (the first one, on a retry).

        Raises:
            InvalidArgumentError: Text out of bounds, or bad ids.
            NotFoundError: No such room of the caller's.
            UnavailableError: Still unavailable after the retries; retry with the same id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.SendMessageRequest(
            room_id=room_id, text=text, client_message_id=client_message_id or str(uuid.uuid4())
        )
        return (await self._idempotent(lambda md: self.chat.SendMessage(request, metadata=md))).message

    def list_messages(
        self, room_id: str, *, before_sequence: int = 0, after_sequence: int = 0, page_size: int = 0
    ) -> AsyncGenerator[chat_pb2.Message, None]:
        """A room's history, fetched a page at a time.

        With no bound: newest first, back to the first message. With before_sequence: older
        than it, newest first. With after_sequence: newer than it, oldest first. A bound of 0 is
        no bound (the contract's default), so after_sequence=0 reads newest first; from the first
        message on, oldest first, is after_sequence on Connect (ChatConnection.subscribe).

        Args:
            room_id: The room's UUID.
            before_sequence: Only messages with a lower sequence (at most one bound).
            after_sequence: Only messages with a higher sequence (at most one bound).
            page_size: Messages per page, 1-100; 0 lets the server choose.

        Raises:
            InvalidArgumentError: Both bounds, a bad page size or id.
            NotFoundError: No such room of the caller's.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.ListMessagesRequest(
            room_id=room_id,
            before_sequence=before_sequence,
            after_sequence=after_sequence,
            page_size=page_size,
        )
        return self._paged(self.chat.ListMessages, request, lambda page: page.messages)

    async def mark_read(self, room_id: str, sequence: int) -> int:
        """Record that the caller has read up to a sequence, and tell the room's live streams.

        Args:
            room_id: The room's UUID.
            sequence: Read up to and including this sequence.

        Returns:
            The read mark after the call (it never moves backwards).

        Raises:
            InvalidArgumentError: A bad id or sequence.
            NotFoundError: No such room of the caller's.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.MarkReadRequest(room_id=room_id, sequence=sequence)
        reply = await self._idempotent(lambda md: self.chat.MarkRead(request, metadata=md))
        return reply.last_read_sequence

    async def send_payment(
        self,
        *,
        room_id: str,
        to_user_id: str,
        currency: str,
        amount_minor: int,
        memo: str = "",
        request_id: str | None = None,
    ) -> chat_pb2.SendPaymentResponse:
        """Pay a member of a room: the transfer and its PAYMENT message commit together or not at all.

        Args:
            room_id: The room's UUID.
            to_user_id: The recipient, a member other than the caller.
            currency: ISO-4217 code.
            amount_minor: Minor units, 1 to 10**15.
            memo: Optional free text, at most 256 characters.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The PAYMENT message and the posted transfer.

        Raises:
            InvalidArgumentError: A bad amount, currency, memo or id.
            NotFoundError: No such room of the caller's, or the recipient is not a member.
            InsufficientFundsError: Not enough available balance.
            IdempotencyKeyReusedError: request_id was used for a different request.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.SendPaymentRequest(
            request_id=request_id_or_new(request_id),
            room_id=room_id,
            to_user_id=to_user_id,
            currency=currency,
            amount_minor=amount_minor,
            memo=memo,
        )
        return await self._idempotent(lambda md: self.chat.SendPayment(request, metadata=md))

    async def request_payment(
        self,
        *,
        room_id: str,
        from_user_id: str,
        currency: str,
        amount_minor: int,
        memo: str = "",
        expire_time: datetime | None = None,
        request_id: str | None = None,
    ) -> chat_pb2.Message:
        """Ask a member of a room for money with a PAYMENT_REQUEST message.

        Args:
            room_id: The room's UUID.
            from_user_id: Who is asked to pay, a member other than the caller.
            currency: ISO-4217 code.
            amount_minor: Minor units, 1 to 10**15.
            memo: Optional free text, at most 256 characters.
            expire_time: When the request closes as EXPIRED (aware datetime, at most 365 days
                ahead); None: never.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The PAYMENT_REQUEST message (state OPEN); its payment_request.id names the request.

        Raises:
            InvalidArgumentError: A bad amount, currency, memo, id or expiry.
            NotFoundError: No such room of the caller's, or the payer is not a member.
            IdempotencyKeyReusedError: request_id was used for a different request.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.RequestPaymentRequest(
            request_id=request_id_or_new(request_id),
            room_id=room_id,
            from_user_id=from_user_id,
            currency=currency,
            amount_minor=amount_minor,
            memo=memo,
        )
        if expire_time is not None:
            request.expire_time.CopyFrom(timestamp(expire_time))
        return (await self._idempotent(lambda md: self.chat.RequestPayment(request, metadata=md))).message

    async def respond_to_payment_request(
        self,
        payment_request_id: str,
        action: chat_pb2.PaymentRequestAction.ValueType,
        *,
        request_id: str | None = None,
    ) -> chat_pb2.RespondToPaymentRequestResponse:
        """Accept (the payer pays), decline (the payer) or cancel (the requester) an open request.

        accept_payment_request, decline_payment_request and cancel_payment_request say the same
        with the action in their name.

        Args:
            payment_request_id: The request's id (PaymentRequestInfo.id).
            action: PAYMENT_REQUEST_ACTION_ACCEPT, _DECLINE or _CANCEL.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The PAYMENT_REQUEST message recording the new state, and the transfer when accepted.

        Raises:
            InvalidArgumentError: A bad id or action.
            NotFoundError: No such request in a room of the caller's.
            PermissionDeniedError: The caller is the wrong party for the action.
            FailedPreconditionError: reason PAYMENT_REQUEST_CLOSED or PAYMENT_REQUEST_EXPIRED.
            InsufficientFundsError: Accepting, and not enough available balance.
            IdempotencyKeyReusedError: request_id was used for a different request.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = chat_pb2.RespondToPaymentRequestRequest(
            request_id=request_id_or_new(request_id), payment_request_id=payment_request_id, action=action
        )
        return await self._idempotent(lambda md: self.chat.RespondToPaymentRequest(request, metadata=md))

    async def accept_payment_request(
        self, payment_request_id: str, *, request_id: str | None = None
    ) -> chat_pb2.RespondToPaymentRequestResponse:
        """Pay an open request addressed to the caller (respond_to_payment_request with ACCEPT).

        Args:
            payment_request_id: The request's id (PaymentRequestInfo.id).
            request_id: A UUID that makes retries safe; made for you when omitted.

        Raises:
            As respond_to_payment_request; PermissionDeniedError when the caller is not the payer.
        """
        action = chat_pb2.PAYMENT_REQUEST_ACTION_ACCEPT
        return await self.respond_to_payment_request(payment_request_id, action, request_id=request_id)

    async def decline_payment_request(
        self, payment_request_id: str, *, request_id: str | None = None
    ) -> chat_pb2.RespondToPaymentRequestResponse:
        """Refuse an open request addressed to the caller (respond_to_payment_request with DECLINE).

        Args:
            payment_request_id: The request's id (PaymentRequestInfo.id).
            request_id: A UUID that makes retries safe; made for you when omitted.

        Raises:
            As respond_to_payment_request; PermissionDeniedError when the caller is not the payer.
        """
        action = chat_pb2.PAYMENT_REQUEST_ACTION_DECLINE
        return await self.respond_to_payment_request(payment_request_id, action, request_id=request_id)

    async def cancel_payment_request(
        self, payment_request_id: str, *, request_id: str | None = None
    ) -> chat_pb2.RespondToPaymentRequestResponse:
        """Withdraw an open request the caller made (respond_to_payment_request with CANCEL).

        Args:
            payment_request_id: The request's id (PaymentRequestInfo.id).
            request_id: A UUID that makes retries safe; made for you when omitted.

        Raises:
            As respond_to_payment_request; PermissionDeniedError when the caller is not the requester.
        """
        action = chat_pb2.PAYMENT_REQUEST_ACTION_CANCEL
        return await self.respond_to_payment_request(payment_request_id, action, request_id=request_id)
