// The openai npm package and the Vercel AI SDK (@ai-sdk/openai-compatible, @ai-sdk/openai),
// pointed at the engine as a developer would, with their default settings.
// Run by tests/compat/test_node_clients.py, which starts the engine in front of a fake
// model and passes WATTFARE_BASE_URL, WATTFARE_SECRET_KEY, WATTFARE_MODEL and
// WATTFARE_GRANTS (a JSON object: test name -> a fresh grant token).
import assert from "node:assert/strict";
import { test } from "node:test";

import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { APICallError, generateText, jsonSchema, streamText, tool } from "ai";
import OpenAI from "openai";

const baseURL = process.env.WATTFARE_BASE_URL;
const apiKey = process.env.WATTFARE_SECRET_KEY;
const MODEL = process.env.WATTFARE_MODEL;
const GRANTS = JSON.parse(process.env.WATTFARE_GRANTS);
const TEXT = "Hello from the fake model";

function grant(name) {
  assert.ok(GRANTS[name], `no grant for ${name}`);
  return GRANTS[name];
}

async function remaining(token) {
  const response = await fetch(`${baseURL}/grant`, {
    headers: { Authorization: `Bearer ${apiKey}`, "x-wattfare-grant": token },
  });
  return (await response.json()).remaining;
}

const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "The weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
    },
  },
};

const weatherTool = tool({
  description: "The weather in a city.",
  inputSchema: jsonSchema({
    type: "object",
    properties: { city: { type: "string" } },
    required: ["city"],
    additionalProperties: false,
  }),
});

// --- openai (npm) -------------------------------------------------------------------------

function openaiFor(name, options = {}) {
  return new OpenAI({ apiKey, baseURL, defaultHeaders: { "x-wattfare-grant": grant(name) }, ...options });
}

test("openai: plain, stream and the 402", async () => {
  const client = openaiFor("openai-basic-2");
  const { data, response } = await client.chat.completions
    .create({ model: MODEL, messages: [{ role: "user", content: "Hi" }] })
    .withResponse();
  assert.equal(data.choices[0].message.content, TEXT);
  assert.equal(response.headers.get("x-wattfare-grant-remaining"), "1");
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "Hi" }],
    stream: true,
  });
  let text = "";
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
  assert.equal(text, TEXT);
  await assert.rejects(
    client.chat.completions.create({ model: MODEL, messages: [{ role: "user", content: "Hi" }] }),
    (error) => error.status === 402 && error.error.reason === "exhausted",
  );
});

test("openai: tools, plain and streamed", async () => {
  const client = openaiFor("openai-tools");
  const messages = [{ role: "user", content: "Weather in Paris?" }];
  const plain = await client.chat.completions.create({ model: MODEL, messages, tools: [weather] });
  assert.equal(plain.choices[0].finish_reason, "tool_calls");
  const [call] = plain.choices[0].message.tool_calls;
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
  const stream = await client.chat.completions.create({ model: MODEL, messages, tools: [weather], stream: true });
  let name = "";
  let args = "";
  for await (const chunk of stream) {
    for (const delta of chunk.choices[0]?.delta?.tool_calls ?? []) {
      name += delta.function?.name ?? "";
      args += delta.function?.arguments ?? "";
    }
  }
  assert.equal(name, "get_weather");
  assert.deepEqual(JSON.parse(args), { city: "Paris" });
  assert.equal(await remaining(grant("openai-tools")), 1);
});

test("openai: a timeout and its retry use one request", async () => {
  const client = openaiFor("openai-timeout", { timeout: 500 }); // maxRetries: the default, 2
  const completion = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: "Think hard [slow 0.9]" }],
  });
  assert.equal(completion.choices[0].message.content, TEXT);
  assert.equal(await remaining(grant("openai-timeout")), 2);
});

test("openai: the Responses API", async () => {
  const client = openaiFor("openai-responses-2");
  const response = await client.responses.create({ model: MODEL, input: "Hi" });
  assert.equal(response.output_text, TEXT);
  const stream = await client.responses.create({ model: MODEL, input: "Hi", stream: true });
  let text = "";
  for await (const event of stream) if (event.type === "response.output_text.delta") text += event.delta;
  assert.equal(text, TEXT);
  assert.equal(await remaining(grant("openai-responses-2")), 0);
});

// --- the AI SDK: @ai-sdk/openai-compatible (chat completions) --------------------------------

function compatibleFor(name) {
  return createOpenAICompatible({
    name: "wattfare",
    baseURL,
    apiKey,
    headers: { "x-wattfare-grant": grant(name) },
    includeUsage: true,
  });
}

test("ai-sdk openai-compatible: generateText, streamText and the 402", async () => {
  const provider = compatibleFor("compatible-basic-2");
  const { text, usage } = await generateText({ model: provider(MODEL), prompt: "Hi" });
  assert.equal(text, TEXT);
  assert.equal(usage.outputTokens, 5);
  const result = streamText({ model: provider(MODEL), prompt: "Hi" });
  assert.equal(await result.text, TEXT);
  await assert.rejects(
    generateText({ model: provider(MODEL), prompt: "Hi", maxRetries: 0 }),
    (error) => APICallError.isInstance(error) && error.statusCode === 402,
  );
});

test("ai-sdk openai-compatible: tools, plain and streamed", async () => {
  const provider = compatibleFor("compatible-tools");
  const plain = await generateText({
    model: provider(MODEL),
    prompt: "Weather in Paris?",
    tools: { get_weather: weatherTool },
    toolChoice: "required",
  });
  assert.equal(plain.finishReason, "tool-calls");
  assert.deepEqual(plain.toolCalls.map((c) => [c.toolName, c.input]), [["get_weather", { city: "Paris" }]]);
  const streamed = streamText({
    model: provider(MODEL),
    prompt: "Weather in Paris?",
    tools: { get_weather: weatherTool },
  });
  const calls = await streamed.toolCalls;
  assert.deepEqual(calls.map((c) => [c.toolName, c.input]), [["get_weather", { city: "Paris" }]]);
  assert.equal(await remaining(grant("compatible-tools")), 1);
});

test("ai-sdk openai-compatible: an upstream timeout and its retry use one request", async () => {
  // The model is slower than the engine's upstream timeout the first time: the engine
  // answers 504 (nothing charged), the AI SDK retries, and the retry is answered.
  const provider = compatibleFor("compatible-timeout");
  const { text } = await generateText({ model: provider(MODEL), prompt: "Think hard [slow 2.5 once]" });
  assert.equal(text, TEXT);
  assert.equal(await remaining(grant("compatible-timeout")), 2);
});

// --- the AI SDK: @ai-sdk/openai's default model (the Responses API) --------------------------

function openaiProviderFor(name) {
  return createOpenAI({ baseURL, apiKey, headers: { "x-wattfare-grant": grant(name) } });
}

test("ai-sdk openai: generateText, streamText and the 402 on /responses", async () => {
  const openai = openaiProviderFor("responses-basic-2");
  const { text, usage } = await generateText({ model: openai(MODEL), prompt: "Hi" });
  assert.equal(text, TEXT);
  assert.equal(usage.outputTokens, 5);
  const result = streamText({ model: openai(MODEL), prompt: "Hi" });
  assert.equal(await result.text, TEXT);
  await assert.rejects(
    generateText({ model: openai(MODEL), prompt: "Hi", maxRetries: 0 }),
    (error) => APICallError.isInstance(error) && error.statusCode === 402,
  );
});

test("ai-sdk openai: tools, plain and streamed, on /responses", async () => {
  const openai = openaiProviderFor("responses-tools");
  const plain = await generateText({
    model: openai(MODEL),
    prompt: "Weather in Paris?",
    tools: { get_weather: weatherTool },
  });
  assert.equal(plain.finishReason, "tool-calls");
  assert.deepEqual(plain.toolCalls.map((c) => [c.toolName, c.input]), [["get_weather", { city: "Paris" }]]);
  const streamed = streamText({
    model: openai(MODEL),
    prompt: "Weather in Paris?",
    tools: { get_weather: weatherTool },
  });
  const calls = await streamed.toolCalls;
  assert.deepEqual(calls.map((c) => [c.toolName, c.input]), [["get_weather", { city: "Paris" }]]);
  assert.equal(await remaining(grant("responses-tools")), 1);
});

test("ai-sdk openai: an upstream timeout and its retry use one request on /responses", async () => {
  const openai = openaiProviderFor("responses-timeout");
  const { text } = await generateText({ model: openai(MODEL), prompt: "Think harder [slow 2.5 once]" });
  assert.equal(text, TEXT);
  assert.equal(await remaining(grant("responses-timeout")), 2);
});
