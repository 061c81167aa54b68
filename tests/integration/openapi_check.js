// Node side of test_openapi.py and test_frontend.py (npm packages from
// tools/npm, installed by ./dev into .dev/npm/node_modules).
//
//   node openapi_check.js validate DOC.json
//       validates an OpenAPI document with @apidevtools/swagger-parser;
//       prints {"ok":true,"paths":N} or the validator's message, exit 1.
//   node openapi_check.js responses CASES.json
//       CASES.json is {"document": {...}, "cases": [{"method","path","status","body"}]}:
//       each body is validated with Ajv (JSON Schema 2020-12, as OpenAPI 3.1
//       takes it) against the document's schema for that route and status.
//       Prints {"checked":N,"failures":[...]}; exit 1 when any case fails.
//   node openapi_check.js browse URL SCREENSHOT
//       opens URL in headless Chromium (/usr/bin/chromium, fresh profile),
//       waits for Swagger UI's operations and prints what the page shows,
//       its console errors and every URL it requested.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");

const modules = process.env.KEEL_TEST_NODE_MODULES;
if (!modules) {
    console.error("KEEL_TEST_NODE_MODULES is not set (./dev test sets it)");
    process.exit(2);
}
const need = (name) => require(path.join(modules, name));

async function validate(file) {
    const SwaggerParser = need("@apidevtools/swagger-parser");
    const api = await SwaggerParser.validate(file);
    console.log(JSON.stringify({ ok: true, openapi: api.openapi, paths: Object.keys(api.paths).length }));
}

// JSON pointer escaping of one segment.
const seg = (s) => String(s).replace(/~/g, "~0").replace(/\//g, "~1");

function responses(file) {
    const Ajv2020 = need("ajv/dist/2020");
    const input = JSON.parse(fs.readFileSync(file, "utf8"));
    const doc = Object.assign({}, input.document, { $id: "keel-openapi" });
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    ajv.addFormat("uuid", /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
    ajv.addFormat("date-time", /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/);
    ajv.addSchema(doc);
    const failures = [];
    let checked = 0;
    for (const c of input.cases) {
        const op = ((doc.paths || {})[c.path] || {})[c.method.toLowerCase()];
        const resp = op && op.responses && (op.responses[String(c.status)] || op.responses.default);
        const media = resp && resp.content && resp.content["application/json"];
        if (!media || !media.schema) {
            failures.push({ case: c.label || `${c.method} ${c.path} ${c.status}`, error: "no schema documented" });
            continue;
        }
        const pointer = ["paths", c.path, c.method.toLowerCase(), "responses",
            op.responses[String(c.status)] ? String(c.status) : "default", "content",
            "application/json", "schema"].map(seg).join("/");
        const check = ajv.compile({ $ref: `keel-openapi#/${pointer}` });
        checked++;
        if (!check(c.body))
            failures.push({ case: c.label || `${c.method} ${c.path} ${c.status}`,
                body: JSON.stringify(c.body).slice(0, 400), errors: check.errors.slice(0, 8) });
    }
    console.log(JSON.stringify({ checked, failures }, null, 1));
    if (failures.length > 0)
        process.exit(1);
}

async function browse(url, screenshot) {
    const { chromium } = need("playwright-core");
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), "keel-chromium-"));
    const ctx = await chromium.launchPersistentContext(profile, {
        executablePath: process.env.KEEL_TEST_CHROMIUM || "/usr/bin/chromium",
        headless: true,
        args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    });
    const result = { console_errors: [], requests: [], operations: [], tags: [], title: null };
    try {
        const page = await ctx.newPage();
        page.on("console", (m) => { if (m.type() === "error") result.console_errors.push(m.text()); });
        page.on("pageerror", (e) => result.console_errors.push("uncaught: " + e.message));
        page.on("requestfailed", (r) => result.console_errors.push("request failed: " + r.url()));
        page.on("request", (r) => result.requests.push(r.url()));
        const resp = await page.goto(url, { waitUntil: "networkidle", timeout: 30000 });
        result.status = resp.status();
        await page.waitForSelector(".opblock-summary-path", { timeout: 30000 });
        result.title = await page.title();
        result.operations = await page.$$eval(".opblock-summary", (els) => els.map((e) => {
            const m = e.querySelector(".opblock-summary-method");
            const p = e.querySelector(".opblock-summary-path");
            return (m ? m.textContent.trim() : "?") + " " +
                (p ? (p.getAttribute("data-path") || p.textContent).trim() : "?");
        }));
        result.tags = await page.$$eval(".opblock-tag", (els) => els.map((e) =>
            e.getAttribute("data-tag") || e.textContent.trim()));
        if (screenshot)
            await page.screenshot({ path: screenshot, fullPage: false });
    } finally {
        await ctx.close();
        fs.rmSync(profile, { recursive: true, force: true });
    }
    console.log(JSON.stringify(result, null, 1));
}

const [cmd, a, b] = process.argv.slice(2);
const run = cmd === "validate" ? validate(a) : cmd === "responses" ? Promise.resolve(responses(a))
    : cmd === "browse" ? browse(a, b) : Promise.reject(new Error("unknown command " + cmd));
run.catch((e) => {
    console.error(e && e.message ? e.message : String(e));
    process.exit(1);
});
