// Builds Agora AccessToken2 RTC tokens with the official `agora-token` package for the cases read
// from stdin (a JSON array) and prints the tokens as a JSON array. Used by tests/it/agora.rs to
// cross-check Switchboard's own token builder.
'use strict';
const { AccessToken2, ServiceRtc } = require('agora-token/src/AccessToken2');

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const cases = JSON.parse(input);
  const tokens = cases.map((c) => {
    const token = new AccessToken2(c.appId, c.appCertificate, c.issueTs, c.expire);
    token.salt = c.salt;
    const rtc = new ServiceRtc(c.channel, c.uid);
    for (const [privilege, secs] of c.privileges) rtc.add_privilege(privilege, secs);
    token.add_service(rtc);
    return token.build();
  });
  process.stdout.write(JSON.stringify(tokens));
});
