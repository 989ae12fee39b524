// SendInChat from Node.js: the three services loaded from protos/ at run time, unary calls as
// promises, google.rpc status details decoded from the trailers, and a buffer for streams.
import { fileURLToPath } from "node:url";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const PROTOS = fileURLToPath(new URL("../../protos", import.meta.url));
// google/rpc/{status,error_details}.proto, vendored: protos/ does not hold them (see README).
const GOOGLE_RPC = fileURLToPath(new URL("./proto/google/rpc/", import.meta.url));

// Field names as in the .proto files, int64 as strings (money must not pass through a double),
// enums by name, unset fields present, and each oneof's chosen field named (`event: "ack"`).
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

const definition = protoLoader.loadSync(
  ["sendinchat/v1/users.proto", "sendinchat/v1/ledger.proto", "sendinchat/v1/chat.proto"],
  { ...LOADER_OPTIONS, includeDirs: [PROTOS] },
);
const { v1 } = grpc.loadPackageDefinition(definition).sendinchat;

// google/protobuf/{any,duration}.proto, which these import, are bundled with protobufjs.
const googleRpc = new protobuf.Root().loadSync(
  [`${GOOGLE_RPC}status.proto`, `${GOOGLE_RPC}error_details.proto`],
  { keepCase: true },
);
const Status = googleRpc.lookupType("google.rpc.Status");

export const CALL_TIMEOUT_MS = 10_000;

/** One client per service, sharing the connection to `address` (plaintext). */
export function connect(address) {
  const credentials = grpc.credentials.createInsecure();
  return {
    users: new v1.UserService(address, credentials),
    ledger: new v1.LedgerService(address, credentials),
    chat: new v1.ChatService(address, credentials),
  };
}

/** Call metadata carrying an access token (none for the public RPCs). */
export function bearer(token) {
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return metadata;
}

/** A unary call as a promise; rejects with grpc-js's ServiceError (code, details, metadata). */
export function call(client, method, request, token) {
  const options = { deadline: Date.now() + CALL_TIMEOUT_MS };
  return new Promise((resolve, reject) => {
    client[method](request, bearer(token), options, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

/** The code's name, e.g. FAILED_PRECONDITION for 9. */
export function codeName(code) {
  return grpc.status[code];
}

/**
 * The google.rpc.Status details of a failed call, decoded: `[{ type: "google.rpc.ErrorInfo",
 * reason, domain, metadata }, ...]`. The server sends them in the `grpc-status-details-bin`
 * trailer, which grpc-js hands over as a Buffer in `error.metadata`.
 */
export function statusDetails(error) {
  const [bytes] = error.metadata?.get("grpc-status-details-bin") ?? [];
  if (!bytes) return [];
  return Status.decode(bytes).details.map((any) => {
    const type = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const messageType = googleRpc.lookup(type);
    if (!(messageType instanceof protobuf.Type)) return { type };
    return { type, ...messageType.toObject(messageType.decode(any.value), LOADER_OPTIONS) };
  });
}

/** The ErrorInfo detail of a failed call, or null. */
export function errorInfo(error) {
  return statusDetails(error).find((detail) => detail.type === "google.rpc.ErrorInfo") ?? null;
}

/** Buffers what a stream receives so each step can wait for the next message it wants. */
export class Inbox {
  #items = [];
  #failure = null;
  #wake = null;

  constructor(stream) {
    this.stream = stream;
    // Every streaming call ends with a status (OK included); an error also ends the inbox.
    this.status = new Promise((resolve) => stream.on("status", resolve));
    this.metadata = new Promise((resolve) => stream.on("metadata", resolve));
    stream.on("data", (item) => {
      this.#items.push(item);
      this.#notify();
    });
    stream.on("error", (error) => this.#stop(error));
    stream.on("end", () => this.#stop(new Error("the stream ended")));
  }

  /** The next buffered or arriving message that `matches`, within `timeoutMs`. */
  async next(matches = () => true, timeoutMs = CALL_TIMEOUT_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.#items.findIndex(matches);
      if (index >= 0) return this.#items.splice(index, 1)[0];
      if (this.#failure) throw this.#failure;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no matching message within ${timeoutMs} ms`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  #stop(failure) {
    this.#failure ??= failure;
    this.#notify();
  }

  #notify() {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
