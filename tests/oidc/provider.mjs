// A real OpenID provider on loopback for ledger's OAuth tests (panva's OpenID-certified oidc-provider).
//
//   node provider.mjs [--port N]          (N = 0, the default, picks a free port)
//
// It prints one line on stdout once it listens, and nothing else there:
//   READY {"issuer":"http://127.0.0.1:PORT","port":PORT}
// Its own warnings go to stderr. SIGTERM / SIGINT stop it.
//
// What it does, for tests only (never a production configuration):
// - open dynamic client registration (RFC 7591), PKCE (S256) required on every authorization request
// - RFC 8707 resource indicators: a token for resource R is a JWT (RFC 9068, typ at+jwt) with aud = R,
//   signed by the RSA key published at /jwks (OIDC_AT_FORMAT=opaque: an opaque token, for introspection)
// - authorization code + refresh tokens, client_credentials (client ledger-service, secret
//   ledger-service-secret, which may also introspect), introspection
// - login and consent scripted, no browser: /interaction/:uid answers with a 303 straight back to the
//   authorization endpoint. The account is the request's login_hint (alice, bob), else alice; any other
//   login_hint ends the request with access_denied (a person who refuses).
// - POST /test/sign {claims, header}: a JWT signed with the provider's own key, for the tokens no real
//   flow hands out (expired, not yet valid, without a subject).
// - GET /test/stats: {"jwksFetches": N}, how often its key set was fetched.
//
// Environment: OIDC_RESOURCE_SCOPES (scopes a resource offers, "ledger:read ledger:write"),
// OIDC_AT_TTL (access token lifetime, s: 300), OIDC_AT_FORMAT (jwt | opaque), OIDC_DEFAULT_RESOURCE (the
// resource of a token request that names none), OIDC_KEYS (a file of the private keys it publishes, the
// first signing; made with one new key when missing, so a restart can keep its keys) and OIDC_ROTATE=1
// (a key rotation: a new key signs from now on, the ones in OIDC_KEYS stay published).
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import { Provider, errors, interactionPolicy } from 'oidc-provider';

const env = process.env;
const ACCOUNTS = {
  alice: { sub: 'alice', name: 'Alice Example' },
  bob: { sub: 'bob', name: 'Bob Example' },
};
const RESOURCE_SCOPES = env.OIDC_RESOURCE_SCOPES || 'ledger:read ledger:write';
const AT_TTL = Number(env.OIDC_AT_TTL || 300);
const AT_FORMAT = env.OIDC_AT_FORMAT || 'jwt';
const LOOPBACKS = new Set(['127.0.0.1', 'localhost', '[::1]']);

function argPort() {
  const i = process.argv.indexOf('--port');
  return Number(i > 0 ? process.argv[i + 1] : 0);
}

function signingKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = crypto.createHash('sha256').update(JSON.stringify({ e: jwk.e, kty: jwk.kty, n: jwk.n }))
    .digest('base64url'); // RFC 7638 thumbprint
  return { ...jwk, kid, use: 'sig', alg: 'RS256' };
}

function signingKeys() {
  if (!env.OIDC_KEYS) return [signingKey()];
  const kept = fs.existsSync(env.OIDC_KEYS) ? JSON.parse(fs.readFileSync(env.OIDC_KEYS, 'utf8')) : [];
  const keys = kept.length === 0 || env.OIDC_ROTATE === '1' ? [signingKey(), ...kept] : kept;
  fs.writeFileSync(env.OIDC_KEYS, JSON.stringify(keys), { mode: 0o600 });
  return keys;
}

function resourceAllowed(indicator) {
  if (indicator === env.OIDC_DEFAULT_RESOURCE) return true;
  const url = URL.parse(indicator);
  return !!url && url.protocol === 'http:' && LOOPBACKS.has(url.hostname);
}

// A provider session (its cookie) outlives one authorization: a login_hint naming another account than
// the session's asks for login again, so the hint always decides.
function interactions() {
  const { Check, base } = interactionPolicy;
  const policy = base();
  policy.get('login').checks.push(new Check(
    'login_hint_other_account', 'login_hint names another account than the signed-in one', 'login_required',
    (ctx) => {
      const hint = ctx.oidc.params.login_hint;
      return !!hint && !!ctx.oidc.session.accountId && hint !== ctx.oidc.session.accountId;
    },
  ));
  return { policy };
}

function configuration(keys) {
  return {
    jwks: { keys },
    clients: [{
      client_id: 'ledger-service',
      client_secret: 'ledger-service-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    }],
    cookies: { keys: ['ledger-test-cookie-key-not-secret'] },
    interactions: interactions(),
    responseTypes: ['code'],
    pkce: { required: () => true },
    // Registration refuses a client `scope` naming a scope outside this list, and the MCP SDK registers
    // with the scopes it will request: the resource's scopes are listed here too.
    scopes: ['openid', 'offline_access', ...RESOURCE_SCOPES.split(' ')],
    async findAccount(ctx, sub) {
      const account = ACCOUNTS[sub];
      return account && { accountId: sub, async claims() { return { ...account }; } };
    },
    async issueRefreshToken(ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    features: {
      devInteractions: { enabled: false },
      registration: { enabled: true, initialAccessToken: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A token request naming no resource (a Kafka client's: OAUTHBEARER has no way to name one) is
        // for OIDC_DEFAULT_RESOURCE, e.g. urn:ledger:kafka, the audience the secured cluster's brokers expect.
        async defaultResource(ctx, client, oneOf) {
          return oneOf ? oneOf[0] : env.OIDC_DEFAULT_RESOURCE || undefined;
        },
        async useGrantedResource() {
          return true;
        },
        async getResourceServerInfo(ctx, indicator) {
          if (!resourceAllowed(indicator)) {
            throw new errors.InvalidTarget(`resource ${indicator} is not served by this provider`);
          }
          return { scope: RESOURCE_SCOPES, audience: indicator, accessTokenTTL: AT_TTL,
            accessTokenFormat: AT_FORMAT, jwt: { sign: { alg: 'RS256' } } };
        },
      },
    },
  };
}

async function scriptedInteraction(provider, ctx) {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const { prompt, params, session } = details;
  let result;
  let merge = false;
  if (prompt.name === 'login') {
    const accountId = params.login_hint || 'alice';
    result = ACCOUNTS[accountId]
      ? { login: { accountId } }
      : { error: 'access_denied', error_description: `no account ${accountId}` };
  } else if (prompt.name === 'consent') {
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const missing = prompt.details;
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    result = { consent: details.grantId ? {} : { grantId } };
    merge = true;
  } else {
    result = { error: 'access_denied', error_description: `unexpected prompt ${prompt.name}` };
  }
  const to = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge });
  ctx.set('cache-control', 'no-store');
  ctx.status = 303;
  ctx.redirect(to);
}

function signed(key, header, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const input = `${part({ alg: 'RS256', typ: 'at+jwt', kid: key.kid, ...header })}.${part(claims)}`;
  const signature = crypto.sign('sha256', Buffer.from(input), crypto.createPrivateKey({ key, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString() || '{}');
}

const keys = signingKeys();
const [key] = keys;
let jwksFetches = 0;
const server = http.createServer();
await new Promise((resolve) => server.listen(argPort(), '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, configuration(keys));

provider.use(async (ctx, next) => {
  if (ctx.method === 'GET' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
    return scriptedInteraction(provider, ctx);
  }
  if (ctx.method === 'POST' && ctx.path === '/test/sign') {
    const { header = {}, claims = {} } = await body(ctx.req);
    ctx.body = { token: signed(key, header, claims), kid: key.kid };
    return undefined;
  }
  if (ctx.method === 'GET' && ctx.path === '/test/stats') {
    ctx.body = { jwksFetches };
    return undefined;
  }
  if (ctx.path === '/jwks') jwksFetches += 1;
  return next();
});
for (const event of ['server_error', 'authorization.error', 'grant.error', 'registration_create.error',
  'introspection.error']) {
  provider.on(event, (ctx, err) => console.error(`oidc ${event}: ${err.name}: ${err.message}`));
}
server.on('request', provider.callback());

const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
console.log(`READY ${JSON.stringify({ issuer, port })}`);
