// The Firestore emulator for DevGem's tests: npm @firestore-emulator/server, bound to loopback,
// with one shim so that Commit keeps Firestore's own rules, which the store adapter relies on:
//
// - a commit is all or nothing: every write's precondition is checked before any write applies
//   (the package applies writes one by one and stops at the first failure, keeping the earlier
//   ones);
// - `update_time` preconditions are enforced (the package checks only `exists`), answering
//   FAILED_PRECONDITION like Firestore;
// - commit times grow strictly, so two commits never leave a document with the same
//   update_time (the package uses the wall clock in milliseconds);
// - an update without a field mask replaces the document, as in Firestore (the package merges
//   the new fields into the old ones, nested maps included);
// - queries may filter and order on nested fields (`data.state`); the package reads only
//   top-level ones.
//
// Usage: node firestore.cjs <port>. Prints "ready <port>" when it listens; exits when its standard
// input closes, so it never outlives the test that started it.
"use strict";
const { FirestoreServer, FirestoreStateDocument, TimestampFromDate } = require("@firestore-emulator/server");
const { CommitResponse } = require("@firestore-emulator/proto/dist/google/firestore/v1/firestore");
const { ServerCredentials } = require("@grpc/grpc-js");

const port = Number(process.argv[2] || 0);
const emulator = new FirestoreServer();
const state = emulator.state;
// The package keeps its grpc-js server private; the shim replaces one registered handler.
const grpcServer = emulator.server;
const COMMIT = "/google.firestore.v1.Firestore/Commit";
const handler = grpcServer.handlers.get(COMMIT);
if (!handler) {
  console.error("the emulator package no longer registers Commit where this shim expects it");
  process.exit(1);
}

// A field path's segments, with backquoted segments unquoted (`a`.b -> ["a", "b"]).
function segments(path) {
  const out = [];
  const pattern = /`((?:[^`\\]|\\.)*)`|([^.`]+)/g;
  let match;
  while ((match = pattern.exec(path)) !== null) {
    out.push(match[1] !== undefined ? match[1].replace(/\\(.)/g, "$1") : match[2]);
  }
  return out;
}

FirestoreStateDocument.prototype.getField = function getField(path) {
  let field;
  let fields = this.fields;
  for (const segment of segments(path)) {
    if (!fields) return undefined;
    field = fields[segment];
    fields = field && field.type === "map_value" ? field.value : undefined;
  }
  return field;
};

const Status = { NOT_FOUND: 5, ALREADY_EXISTS: 6, FAILED_PRECONDITION: 9, INTERNAL: 13 };
let lastCommit = 0;

function millis(timestamp) {
  return Number(timestamp.seconds) * 1000 + Math.floor(Number(timestamp.nanos) / 1e6);
}

function checkPrecondition(write) {
  if (!write.has_current_document) return;
  const path = write.has_delete ? write.delete : write.update.name;
  const document = state.getDocument(path);
  const exists = document.metadata.hasExist;
  const precondition = write.current_document;
  if (precondition.has_exists && precondition.exists !== exists) {
    throw precondition.exists
      ? { code: Status.NOT_FOUND, details: `no entity to update: ${path}` }
      : { code: Status.ALREADY_EXISTS, details: `entity already exists: ${path}` };
  }
  if (precondition.has_update_time) {
    const want = millis(precondition.update_time);
    if (!exists || document.metadata.updatedAt.getTime() !== want) {
      throw { code: Status.FAILED_PRECONDITION, details: `the stored version of ${path} has changed` };
    }
  }
}

handler.func = (call, callback) => {
  lastCommit = Math.max(Date.now(), lastCommit + 1);
  const date = new Date(lastCommit);
  try {
    call.request.writes.forEach(checkPrecondition);
    const results = call.request.writes.map((write) => {
      if (write.has_update && !write.has_update_mask) {
        const document = state.getDocument(write.update.name);
        if (document.metadata.hasExist) document.fields = {};
      }
      return state.writeV1Document(date, write);
    });
    callback(
      null,
      CommitResponse.fromObject({
        commit_time: TimestampFromDate(date),
        write_results: results.map((result) => result.toObject()),
      }),
    );
  } catch (err) {
    if (err && typeof err.code === "number") {
      callback({ code: err.code, details: err.details || err.message }, null);
    } else {
      console.error(err);
      callback({ code: Status.INTERNAL, details: String(err && err.message) }, null);
    }
  }
};

process.stdin.on("end", () => process.exit(0));
process.stdin.resume();

grpcServer.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, bound) => {
  if (err) {
    console.error(`cannot listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  }
  console.log(`ready ${bound}`);
});
