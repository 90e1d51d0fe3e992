// Drives the official OpenAI Node SDK against the gateway; prints one JSON line of what it saw.
// Usage: node sdk.mjs BASE_URL MODEL
import OpenAI from "openai";

const [baseURL, model] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: "unused", maxRetries: 0 });
const messages = [{ role: "user", content: "tell me a story" }];

const stream = client.chat.completions.stream({ model, messages, max_tokens: 3 });
const deltas = [];
stream.on("content", (delta) => deltas.push(delta));
const final = await stream.finalChatCompletion();

// The SDK asks for base64 by default and decodes it into floats itself.
const embedded = await client.embeddings.create({ model, input: ["ab", "abc"] });

console.log(JSON.stringify({
  deltas,
  role: final.choices[0].message.role,
  content: final.choices[0].message.content,
  finish: final.choices[0].finish_reason,
  vectors: embedded.data.map((d) => Array.from(d.embedding)),
}));
