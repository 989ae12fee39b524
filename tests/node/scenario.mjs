// The Node.js client scenario tests/node/test_node_client.py runs against a real server: register
// and log in two users, an admin deposit, a transfer, a refused one (its ErrorInfo read from the
// trailers), WatchTransfers and a Connect exchange. Prints one JSON line per step; the Python
// test asserts on them. Input from the environment:
//   SENDINCHAT_ADDRESS      host:port of the server
//   SENDINCHAT_ADMIN_TOKEN  an admin's access token (admins are made outside the API)
//   SENDINCHAT_ALICE, SENDINCHAT_BOB, SENDINCHAT_PASSWORD  the two users to register
import { randomUUID } from "node:crypto";

import { Inbox, bearer, call, codeName, connect, errorInfo } from "./sendinchat.mjs";

const DEPOSIT_MINOR = 10_000;
const TRANSFER_MINOR = 250;
const TOO_MUCH_MINOR = 1_000_000;

function setting(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

function report(step, fields) {
  process.stdout.write(`${JSON.stringify({ step, ...fields })}\n`);
}

function transferFields(transfer) {
  const { id, kind, state, from_user_id, to_user_id, currency, amount_minor } = transfer;
  return { id, kind, state, from_user_id, to_user_id, currency, amount_minor };
}

async function signUp(client, username, password) {
  const { user } = await call(client.users, "Register", { username, password });
  report("register", { username: user.username, user_id: user.id, role: user.role });
  const { tokens } = await call(client.users, "Login", { username, password });
  report("login", { username, token_type: tokens.token_type, has_access_token: tokens.access_token !== "" });
  return { id: user.id, username: user.username, token: tokens.access_token };
}

async function refusedTransfer(client, alice, bob) {
  const request = {
    request_id: randomUUID(),
    to_user_id: bob.id,
    currency: "USD",
    amount_minor: TOO_MUCH_MINOR,
  };
  try {
    const { transfer } = await call(client.ledger, "CreateTransfer", request, alice.token);
    report("refused", { refused: false, transfer: transferFields(transfer) });
  } catch (error) {
    if (error.code === undefined) throw error;
    report("refused", {
      refused: true,
      code: error.code,
      code_name: codeName(error.code),
      message: error.details,
      error_info: errorInfo(error),
    });
  }
}

async function chatExchange(client, alice, bob) {
  const direct = { kind: "ROOM_KIND_DIRECT", member_user_ids: [bob.id] };
  const { room } = await call(client.chat, "CreateRoom", direct, alice.token);
  const memberUserIds = room.members.map((member) => member.user_id).sort();
  report("room", { room_id: room.id, kind: room.kind, member_user_ids: memberUserIds });

  // Alice subscribes; once the server confirms, Bob sends on his own stream.
  const listening = new Inbox(client.chat.Connect(bearer(alice.token)));
  listening.stream.write({ subscribe: { room_id: room.id, after_sequence: 0 } });
  const subscribed = await listening.next((event) => event.event === "subscribed");

  const sending = new Inbox(client.chat.Connect(bearer(bob.token)));
  const clientMessageId = randomUUID();
  sending.stream.write({
    send: { client_message_id: clientMessageId, room_id: room.id, text: "hello from node" },
  });
  const ack = await sending.next((event) => event.event === "ack" || event.event === "error");
  const received = await listening.next(
    (event) => event.event === "message" && event.message.client_message_id === clientMessageId,
  );

  // Half-closing: the server answers what is pending and ends each stream OK.
  listening.stream.end();
  sending.stream.end();
  const [listenerStatus, senderStatus] = await Promise.all([listening.status, sending.status]);
  const { room_id, sequence, sender_user_id, client_message_id, kind, text } = received.message;
  report("connect", {
    subscribed: subscribed.subscribed,
    ack: ack.ack ?? ack.error,
    received: { room_id, sequence, sender_user_id, client_message_id, kind, text },
    stream_codes: [codeName(listenerStatus.code), codeName(senderStatus.code)],
  });
}

async function main() {
  const client = connect(setting("SENDINCHAT_ADDRESS"));
  const password = setting("SENDINCHAT_PASSWORD");
  try {
    const alice = await signUp(client, setting("SENDINCHAT_ALICE"), password);
    const bob = await signUp(client, setting("SENDINCHAT_BOB"), password);

    // Bob watches his transfers; the server sends the headers once the watch is registered.
    const watch = new Inbox(client.ledger.WatchTransfers({ cursor: "" }, bearer(bob.token)));
    await watch.metadata;
    report("watch_open", {});

    const deposit = await call(
      client.ledger,
      "Deposit",
      { request_id: randomUUID(), to_user_id: alice.id, currency: "USD", amount_minor: DEPOSIT_MINOR },
      setting("SENDINCHAT_ADMIN_TOKEN"),
    );
    report("deposit", transferFields(deposit.transfer));
    const sent = await call(
      client.ledger,
      "CreateTransfer",
      {
        request_id: randomUUID(),
        to_username: bob.username,
        currency: "USD",
        amount_minor: TRANSFER_MINOR,
        memo: "from node",
      },
      alice.token,
    );
    report("transfer", transferFields(sent.transfer));
    await refusedTransfer(client, alice, bob);

    const event = await watch.next();
    watch.stream.cancel();
    report("watched", { transfer: transferFields(event.transfer), has_cursor: event.cursor !== "" });

    await chatExchange(client, alice, bob);
    report("done", {});
  } finally {
    for (const service of Object.values(client)) service.close();
  }
}

main().catch((error) => {
  report("failed", { error: String(error), code: error.code ?? null, stack: error.stack });
  process.exitCode = 1;
});
