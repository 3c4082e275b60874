// wattfare.js as an ES module:  import { createWattfare, WattfareError } from "/static/wattfare.mjs";
//
// The code is in wattfare.js, a classic script so that a plain <script> tag works too.
// Importing it runs it once (or finds the copy a script tag already loaded) and it
// publishes itself on globalThis.Wattfare, which this file re-exports.
import "./wattfare.js";

export const { createWattfare, WattfareError } = globalThis.Wattfare;
