// Cherry Studio's client library (@cherrystudio/ai-core, on the Vercel AI SDK) asking the
// gateway for one image, as Cherry Studio's painting page does: an OpenAI-compatible provider
// at the gateway's base URL, `generateImage` with the library's own retries (3 attempts in all,
// whatever x-should-retry says). Prints one JSON line: the outcome.
//
// usage: node cherry_image.mjs BASE_URL API_KEY MODEL PROMPT
import { generateImage } from '@cherrystudio/ai-core'

const [baseURL, apiKey, model, prompt] = process.argv.slice(2)
try {
  const result = await generateImage(
    'openai-compatible',
    { name: 'gateway', baseURL, apiKey },
    { model, prompt, n: 1, size: '1024x1024' }
  )
  console.log(JSON.stringify({ ok: true, images: result.images.length }))
} catch (error) {
  // the AI SDK's RetryError holds the last attempt's APICallError (and every attempt's)
  const last = error.lastError ?? error
  console.log(
    JSON.stringify({
      ok: false,
      name: error.name,
      status: last.statusCode ?? null,
      attempts: error.errors ? error.errors.length : 1,
      message: String(last.message ?? error.message).slice(0, 500),
      replayed: last.responseHeaders ? last.responseHeaders['x-gateway-replayed'] ?? null : null
    })
  )
}
