// Validate a schema.prisma with Prisma's own parser and print its DMMF (the datamodel Prisma
// Client is generated from) as JSON. Usage: node dmmf.cjs SCHEMA_FILE (NODE_PATH: node_modules).
// Exit 1 with {"error": ...} when Prisma rejects the schema.
"use strict";
const fs = require("fs");
const wasm = require("@prisma/prisma-schema-wasm");

const file = process.argv[2];
const params = JSON.stringify({ prismaSchema: [[file, fs.readFileSync(file, "utf8")]], noColor: true });
try {
  wasm.validate(params);
  const dmmf = JSON.parse(wasm.get_dmmf(params));
  process.stdout.write(JSON.stringify({ datamodel: dmmf.datamodel }));
} catch (err) {
  process.stdout.write(JSON.stringify({ error: String(err && err.message ? err.message : err) }));
  process.exit(1);
}
