<?php
// Isolation probe of tests/isolation.rs (issue 11). The suite puts this file in one
// site's wp-content and posts one probe per request to it: it runs in php-fpm, as
// www-data, exactly where a tenant's plugin runs. Each answer is
//   {"observed": "open" | "denied" | "unreachable" | "missing" | "error", "detail": "..."}
// open: the probe did what it tried (read, connected to the real service, ran the
// command); denied: the real service or the kernel refused; unreachable: nothing
// answered, or something that is not the service did (the machine's egress proxy answers
// any TCP connection to an address no route reaches, and any HTTP request with
// `404`, `server: keryx`); missing: a PHP extension or binary the probe needs is absent.
// Details never carry a secret's value.

header('Content-Type: application/json');
header('Cache-Control: no-store');
error_reporting(E_ALL);
ini_set('display_errors', '0');

function answer(string $observed, string $detail): void
{
    echo json_encode(['observed' => $observed, 'detail' => $detail],
        JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE);
    exit;
}

function last_error(): string
{
    $e = error_get_last();
    error_clear_last();
    return $e ? $e['message'] : 'no error message';
}

function short(string $s, int $n = 120): string
{
    $s = preg_replace('/[^\x20-\x7e]/', '.', $s);
    return strlen($s) > $n ? substr($s, 0, $n) . '…' : $s;
}

$req = json_decode(file_get_contents('php://input'), true);
if (!is_array($req) || !isset($req['kind'])) {
    answer('error', 'no probe in the request body');
}

// The site's settings, read the way WordPress (any plugin) reads them: wp-config's
// constants. Debian's wp-config.php requires /etc/wordpress/config-<host>.php or
// config-default.php, which the agent writes.
$config = '/etc/wordpress/config-default.php';
if (!is_readable($config)) {
    answer('error', "the site's wp-config $config is not readable by PHP");
}
require $config;

/** A `host:port` of the request, with placeholders resolved. */
function target(array $req): array
{
    $host = $req['host'] ?? '';
    $port = (int) ($req['port'] ?? 0);
    if ($host === '@db') {
        [$host, $p] = explode(':', DB_HOST) + [1 => '3306'];
        $port = $port ?: (int) $p;
    } elseif ($host === '@gateway') {
        $host = default_gateway();
    } elseif ($host === '@master') {
        [$host, $port] = redis_master();
    } elseif (str_starts_with($host, '@sentinel')) {
        $i = (int) substr($host, strlen('@sentinel'));
        $s = PRESSDOCK_REDIS_SENTINELS[$i] ?? null;
        if ($s === null) {
            answer('error', "wp-config names no Sentinel number $i");
        }
        [$host, $port] = explode(':', $s);
        $port = (int) $port;
    }
    return [$host, $port];
}

function default_gateway(): string
{
    foreach (file('/proc/net/route') ?: [] as $line) {
        $f = preg_split('/\s+/', trim($line));
        if (($f[1] ?? '') === '00000000' && ($f[2] ?? '00000000') !== '00000000') {
            return long2ip(unpack('V', pack('H*', $f[2]))[1]);
        }
    }
    answer('error', 'no default route in /proc/net/route');
}

// ---------------------------------------------------------------- TCP and banners

/** A connection, or `unreachable` with the reason. */
function dial(string $host, int $port, float $timeout = 3.0)
{
    $s = @stream_socket_client("tcp://$host:$port", $errno, $errstr, $timeout);
    if ($s === false) {
        answer('unreachable', "$host:$port: connect: " . ($errstr ?: "errno $errno"));
    }
    stream_set_timeout($s, (int) ceil($timeout));
    return $s;
}

/** Up to $max bytes, until the peer closes or $timeout seconds of silence. */
function read_some($s, int $max = 65536, float $timeout = 3.0): string
{
    $buf = '';
    $deadline = microtime(true) + $timeout;
    stream_set_blocking($s, false);
    while (strlen($buf) < $max && microtime(true) < $deadline) {
        $r = [$s];
        $w = $e = null;
        if (@stream_select($r, $w, $e, 0, 200000) > 0) {
            $chunk = fread($s, $max - strlen($buf));
            if ($chunk === '' || $chunk === false) {
                if (feof($s)) {
                    break;
                }
                continue;
            }
            $buf .= $chunk;
            // An HTTP answer with its whole body, or a RESP line: enough.
            if (http_complete($buf)) {
                break;
            }
        }
    }
    stream_set_blocking($s, true);
    return $buf;
}

function http_complete(string $buf): bool
{
    if (!str_starts_with($buf, 'HTTP/')) {
        return false;
    }
    $end = strpos($buf, "\r\n\r\n");
    if ($end === false) {
        return false;
    }
    if (preg_match('/\r\ncontent-length:\s*(\d+)/i', substr($buf, 0, $end), $m)) {
        return strlen($buf) >= $end + 4 + (int) $m[1];
    }
    return false;
}

/** The machine's egress proxy (not a service of ours) answered. */
function is_egress_proxy(string $buf): bool
{
    return str_starts_with($buf, 'HTTP/') && preg_match('/\r\nserver:\s*keryx/i', $buf) === 1;
}

function probe_tcp(array $req): void
{
    [$host, $port] = target($req);
    $proto = $req['proto'] ?? 'raw';
    $s = dial($host, $port);
    $where = "$host:$port";
    switch ($proto) {
        case 'mysql':
            // A MySQL server speaks first: its handshake (protocol 10) or an error packet.
            $b = read_some($s, 512);
            if ($b === '') {
                answer('unreachable', "$where: connected, no MySQL handshake (not the service)");
            }
            if (is_egress_proxy($b)) {
                answer('unreachable', "$where: the egress proxy answered, not the service");
            }
            if (strlen($b) > 5 && ord($b[4]) === 10) {
                $version = strstr(substr($b, 5), "\0", true);
                answer('open', "$where: MySQL handshake, server " . short((string) $version, 40));
            }
            if (strlen($b) > 7 && ord($b[4]) === 0xff) {
                answer('denied', "$where: MySQL error packet: " . short(substr($b, 7)));
            }
            answer('open', "$where: answered, not MySQL: " . short($b, 40));
        case 'redis':
            fwrite($s, "PING\r\n");
            $b = read_some($s, 512, 3.0);
            if ($b === '' || is_egress_proxy($b)) {
                answer('unreachable', "$where: no Redis answer" . ($b === '' ? '' : ' (egress proxy)'));
            }
            if (str_starts_with($b, '+PONG')) {
                answer('open', "$where: +PONG without authentication");
            }
            if (preg_match('/^-(NOAUTH|NOPERM|WRONGPASS)/', $b)) {
                answer('denied', "$where: " . short(trim($b)));
            }
            answer('open', "$where: answered: " . short($b, 60));
        case 'varnish':
            // Varnish's CLI: 107 + a challenge when it has a secret, 200 when it has none.
            $b = read_some($s, 512, 3.0);
            if ($b === '' || is_egress_proxy($b)) {
                answer('unreachable', "$where: no Varnish CLI banner");
            }
            if (str_starts_with($b, '107 ')) {
                answer('denied', "$where: Varnish CLI asks for its secret (107 challenge)");
            }
            answer('open', "$where: Varnish CLI without a secret: " . short($b, 40));
        case 'gluster':
            probe_gluster_rpc($s, $where);
        case 'http':
            $path = $req['path'] ?? '/';
            $vhost = $req['vhost'] ?? $host;
            $method = in_array($req['method'] ?? 'GET', ['GET', 'DELETE'], true) ? ($req['method'] ?? 'GET') : 'GET';
            fwrite($s, "$method $path HTTP/1.1\r\nHost: $vhost\r\nUser-Agent: pressdock-isolation\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            $b = read_some($s, 65536, 5.0);
            if ($b === '') {
                answer('unreachable', "$where: connected, no HTTP answer");
            }
            if (is_egress_proxy($b)) {
                answer('unreachable', "$where: the egress proxy answered (404, server: keryx), not the service");
            }
            if (!preg_match('#^HTTP/\d\.\d (\d{3})#', $b, $m)) {
                answer('open', "$where: answered, not HTTP: " . short($b, 40));
            }
            $status = (int) $m[1];
            [$head, $body] = explode("\r\n\r\n", $b, 2) + [1 => ''];
            $server = preg_match('/\r\nserver:\s*([^\r]*)/i', $head, $sm) ? $sm[1] : '-';
            $detail = "$where $method $path: $status, server $server, body " . short(trim($body), 60);
            $open = $req['open_status'] ?? 'any';
            if ($open === 'any' || in_array($status, (array) $open, true)) {
                answer('open', $detail);
            }
            answer('denied', $detail);
        default:
            // Any service that is not the egress proxy: send an HTTP request; the proxy
            // answers it, a real service of another protocol answers otherwise or closes.
            fwrite($s, "GET / HTTP/1.0\r\n\r\n");
            $b = read_some($s, 512, 3.0);
            if (is_egress_proxy($b)) {
                answer('unreachable', "$where: the egress proxy answered, not the service");
            }
            $what = $b === '' ? (feof($s) ? 'closed by the peer' : 'silent') : 'answered ' . short($b, 40);
            answer('open', "$where: connected to a listener that is not the egress proxy ($what)");
    }
}

/** A SunRPC DUMP call (GlusterFS's program list), the first thing a client sends. */
function probe_gluster_rpc($s, string $where): void
{
    $xid = random_int(1, 0x7fffffff);
    // xid, CALL, rpcvers 2, GF_DUMP 123451501 v1, proc DUMP 1, AUTH_NULL, AUTH_NULL, gfs_id.
    $call = pack('NNNNNNNNNNNJ', $xid, 0, 2, 123451501, 1, 1, 0, 0, 0, 0, 0, 0);
    fwrite($s, pack('N', 0x80000000 | strlen($call)) . $call);
    $b = read_some($s, 4096, 3.0);
    if (is_egress_proxy($b)) {
        answer('unreachable', "$where: the egress proxy answered, not the service");
    }
    if (strlen($b) >= 12) {
        $h = unpack('Nmark/Nxid/Ntype', $b);
        if ($h['xid'] === $xid && $h['type'] === 1) {
            answer('open', "$where: GlusterFS RPC answered (DUMP reply, " . strlen($b) . ' bytes)');
        }
    }
    answer('denied', "$where: connected, no plain RPC answer (" . ($b === '' ? 'none' : short($b, 30)) . ')');
}

// ---------------------------------------------------------------- Redis (RESP2/3)

function resp_send($s, array $cmd): void
{
    $out = '*' . count($cmd) . "\r\n";
    foreach ($cmd as $a) {
        $a = (string) $a;
        $out .= '$' . strlen($a) . "\r\n$a\r\n";
    }
    fwrite($s, $out);
}

function resp_line($s): string
{
    $l = fgets($s);
    if ($l === false) {
        throw new RuntimeException(stream_get_meta_data($s)['timed_out'] ? 'timed out' : 'closed');
    }
    return rtrim($l, "\r\n");
}

/** One reply: ['err' => message] for an error, else the value (arrays for aggregates). */
function resp_read($s)
{
    $l = resp_line($s);
    $t = $l[0] ?? '';
    $rest = substr($l, 1);
    switch ($t) {
        case '+': case ':': case ',': case '#': case '(':
            return $rest;
        case '_':
            return null;
        case '-':
            return ['err' => $rest];
        case '$': case '=': case '!':
            $n = (int) $rest;
            if ($n < 0) {
                return null;
            }
            $data = '';
            while (strlen($data) < $n + 2) {
                $c = fread($s, $n + 2 - strlen($data));
                if ($c === false || $c === '') {
                    throw new RuntimeException('closed in a bulk string');
                }
                $data .= $c;
            }
            $data = substr($data, 0, $n);
            return $t === '!' ? ['err' => $data] : $data;
        case '*': case '~': case '>':
            $n = (int) $rest;
            $v = [];
            for ($i = 0; $i < $n; $i++) {
                $v[] = resp_read($s);
            }
            return $t === '>' ? ['push' => $v] : $v;
        case '%': case '|':
            $n = (int) $rest;
            $v = [];
            for ($i = 0; $i < $n; $i++) {
                $k = resp_read($s);
                $v[is_string($k) ? $k : json_encode($k)] = resp_read($s);
            }
            return $t === '|' ? resp_read($s) : $v;
        default:
            throw new RuntimeException('not RESP: ' . short($l, 40));
    }
}

function is_refusal(string $err): bool
{
    return preg_match('/^(NOPERM|NOAUTH|WRONGPASS)|no permissions/i', $err) === 1;
}

/** The master as the object cache finds it: Sentinel, as the site's user. */
function redis_master(): array
{
    foreach (PRESSDOCK_REDIS_SENTINELS as $addr) {
        [$h, $p] = explode(':', $addr);
        $s = @stream_socket_client("tcp://$h:$p", $errno, $errstr, 3);
        if ($s === false) {
            continue;
        }
        stream_set_timeout($s, 3);
        try {
            resp_send($s, ['AUTH', PRESSDOCK_REDIS_USER, PRESSDOCK_REDIS_PASSWORD]);
            $a = resp_read($s);
            resp_send($s, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', PRESSDOCK_REDIS_MASTER_NAME]);
            $m = resp_read($s);
            if (is_array($m) && count($m) === 2 && is_string($m[0])) {
                return [$m[0], (int) $m[1]];
            }
        } catch (RuntimeException $e) {
        }
    }
    answer('error', "the site's Sentinels do not name a master for its user");
}

function probe_redis(array $req): void
{
    [$host, $port] = target($req);
    $where = "$host:$port";
    $s = dial($host, $port);
    $auth = $req['auth'] ?? 'site';
    // Once one RESP reply came back the peer is Redis: a later answer that is not RESP
    // (SYNC streams a snapshot) means the command ran.
    $real = false;
    try {
        if (!empty($req['resp3'])) {
            $hello = ['HELLO', '3'];
            if ($auth === 'site') {
                array_push($hello, 'AUTH', PRESSDOCK_REDIS_USER, PRESSDOCK_REDIS_PASSWORD);
            }
            resp_send($s, $hello);
            $r = resp_read($s);
            $real = true;
            if (is_array($r) && isset($r['err'])) {
                answer(is_refusal($r['err']) ? 'denied' : 'error', "$where HELLO 3: " . short($r['err']));
            }
        } elseif ($auth === 'site') {
            resp_send($s, ['AUTH', PRESSDOCK_REDIS_USER, PRESSDOCK_REDIS_PASSWORD]);
            $r = resp_read($s);
            $real = true;
            if (is_array($r) && isset($r['err'])) {
                answer('denied', "$where AUTH as the site: " . short($r['err']));
            }
        }
        $cmds = $req['cmds'];
        $last = null;
        foreach ($cmds as $i => $cmd) {
            resp_send($s, $cmd);
            $last = resp_read($s);
            $real = true;
            $shown = $cmd[0] . (isset($cmd[1]) ? ' ' . $cmd[1] : '');
            if (is_array($last) && isset($last['err'])) {
                if (is_refusal($last['err'])) {
                    answer('denied', "$where $shown: " . short($last['err']));
                }
                if ($i < count($cmds) - 1) {
                    answer('error', "$where $shown (a step before the probed command): " . short($last['err']));
                }
                // The ACL let the command through; the command itself failed.
                answer('open', "$where $shown: permitted, then failed: " . short($last['err']));
            }
        }
        $want = $req['want'] ?? null;
        $shown = json_encode($last, JSON_INVALID_UTF8_SUBSTITUTE);
        if ($want !== null && $last !== $want) {
            answer('error', "$where: answered " . short($shown) . ", expected " . short(json_encode($want)));
        }
        answer('open', "$where " . implode(' ', array_slice(end($cmds), 0, 2)) . ': ' . short($shown, 80));
    } catch (RuntimeException $e) {
        if ($real) {
            answer('open', "$where: permitted, answered outside RESP (" . $e->getMessage() . ')');
        }
        answer('unreachable', "$where: no RESP answer (" . $e->getMessage() . ')');
    }
}

/** The site's own cache the way its object cache reaches it: php-redis, as the site. */
function probe_phpredis(array $req): void
{
    if (!class_exists('Redis')) {
        answer('missing', 'the php-redis extension (class Redis) is not loaded');
    }
    [$host, $port] = redis_master();
    try {
        $r = new Redis();
        if (!$r->connect($host, $port, 3.0)) {
            answer('unreachable', "$host:$port: php-redis cannot connect");
        }
        if (!$r->auth([PRESSDOCK_REDIS_USER, PRESSDOCK_REDIS_PASSWORD])) {
            answer('denied', "$host:$port: AUTH as the site refused");
        }
        $key = PRESSDOCK_REDIS_PREFIX . 'isolation-probe';
        $value = bin2hex(random_bytes(8));
        $r->setex($key, 60, $value);
        $got = $r->get($key);
        $r->del($key);
        if ($got !== $value) {
            answer('denied', "$host:$port: SETEX/GET of the site's own key did not round-trip");
        }
        answer('open', "$host:$port: SETEX, GET, DEL of {$key} as " . PRESSDOCK_REDIS_USER);
    } catch (RedisException $e) {
        answer(is_refusal($e->getMessage()) ? 'denied' : 'error', "$host:$port: " . short($e->getMessage()));
    }
}

// ---------------------------------------------------------------- MySQL

function probe_mysql(array $req): void
{
    if (!class_exists('mysqli')) {
        answer('missing', 'the mysqli extension is not loaded');
    }
    [$host, $port] = target($req);
    $where = "$host:$port";
    mysqli_report(MYSQLI_REPORT_OFF);
    $m = mysqli_init();
    $m->options(MYSQLI_OPT_CONNECT_TIMEOUT, 3);
    $m->options(MYSQLI_OPT_READ_TIMEOUT, 5);
    $db = $req['db'] ?? DB_NAME;
    if (!@$m->real_connect($host, DB_USER, DB_PASSWORD, $db, $port)) {
        $errno = $m->connect_errno;
        $err = short((string) $m->connect_error);
        // 1044/1045: the server answered and refused; 2002/2003/2006/2013: no MySQL there.
        if (in_array($errno, [1044, 1045, 1130, 1226, 1251], true)) {
            answer('denied', "$where as " . DB_USER . " on $db: $errno $err");
        }
        answer('unreachable', "$where: $errno $err");
    }
    $sql = $req['sql'] ?? null;
    if ($sql === null) {
        answer('open', "$where: logged in as " . DB_USER . ' (server ' . short($m->server_info, 30) . ')');
    }
    $res = $m->query($sql);
    if ($res === false) {
        $errno = $m->errno;
        $err = short($m->error);
        // Access denied to a database, a table, a column, a routine; a privilege missing;
        // not allowed to create users or grant.
        if (in_array($errno, [1044, 1045, 1142, 1143, 1227, 1370, 1410, 1211], true)) {
            answer('denied', "$sql: $errno $err");
        }
        // Not a refusal: the probe's statement is wrong, or the site's own path is broken.
        answer('error', "$sql: failed (not a refusal): $errno $err");
    }
    $rows = $res === true ? [] : $res->fetch_all(MYSQLI_NUM);
    $flat = array_map(fn ($r) => implode('|', array_map('strval', $r)), $rows);
    $shown = short(implode(', ', $flat), 100);
    $open = $req['open_if'] ?? 'ok';
    if ($open === 'ok') {
        answer('open', "$sql: ran (" . count($rows) . " rows: $shown)");
    }
    if ($open === 'rows') {
        answer(count($rows) > 0 ? 'open' : 'denied', "$sql: " . count($rows) . " rows" . ($rows ? ": $shown" : ''));
    }
    if ($open === 'non_null') {
        $v = $rows[0][0] ?? null;
        answer($v !== null ? 'open' : 'denied', "$sql: " . ($v === null ? 'NULL' : 'read ' . strlen((string) $v) . ' bytes'));
    }
    if (str_starts_with($open, 'contains:')) {
        $needle = substr($open, strlen('contains:'));
        $hit = array_filter($flat, fn ($r) => str_contains($r, $needle));
        answer($hit ? 'open' : 'denied', "$sql: " . ($hit ? 'shows ' . short(implode(', ', $hit), 80) : "nothing with $needle ($shown)"));
    }
    answer('error', "unknown open_if $open");
}

// ---------------------------------------------------------------- files

function probe_file(array $req): void
{
    // `@wp_content`: the site's wp-content as its wp-config names it.
    $path = str_replace('@wp_content', WP_CONTENT_DIR, $req['path']);
    $op = $req['op'] ?? 'read';
    error_clear_last();
    switch ($op) {
        case 'exists':
            clearstatcache();
            if (@file_exists($path) || @is_link($path)) {
                answer('open', "$path exists (" . (is_dir($path) ? 'directory' : 'file') . ')');
            }
            $e = last_error();
            answer(str_contains($e, 'ermission') ? 'denied' : 'unreachable', "$path: absent");
        case 'list':
            $l = @scandir($path);
            if ($l !== false) {
                answer('open', "$path: listed " . count($l) . ' entries: ' . short(implode(' ', array_slice($l, 0, 12)), 100));
            }
            $e = last_error();
            answer(str_contains($e, 'ermission') ? 'denied' : 'unreachable', "$path: " . short($e));
        case 'write':
            $probe = rtrim($path, '/') . '/.pd-isolation-' . bin2hex(random_bytes(4));
            $v = bin2hex(random_bytes(8));
            if (@file_put_contents($probe, $v) === false) {
                $e = last_error();
                answer(str_contains($e, 'ermission') ? 'denied' : 'unreachable', "$path: write: " . short($e));
            }
            $back = @file_get_contents($probe);
            @unlink($probe);
            answer($back === $v ? 'open' : 'error', "$path: wrote, read back and removed a file");
        default:
            $f = @fopen($path, 'r');
            if ($f === false) {
                $e = last_error();
                if (str_contains($e, 'ermission')) {
                    answer('denied', "$path: permission denied");
                }
                answer('unreachable', "$path: " . short(preg_replace('/^fopen\([^)]*\): /', '', $e)));
            }
            $b = fread($f, 1 << 16);
            fclose($f);
            answer('open', "$path: read " . strlen((string) $b) . ' bytes');
    }
}

/** Gluster mounts of this container: only the site's own directory of the volume. */
function probe_mounts(array $req): void
{
    $own = $req['own_root'];
    $seen = [];
    $bad = [];
    foreach (file('/proc/self/mountinfo') ?: [] as $line) {
        [$left, $right] = explode(' - ', trim($line), 2) + [1 => ''];
        $f = explode(' ', $left);
        $r = explode(' ', $right);
        if (!str_contains($r[0] ?? '', 'gluster')) {
            continue;
        }
        $root = $f[3] ?? '?';
        $seen[] = "$root on {$f[4]}";
        if ($root !== $own && !str_starts_with($root, "$own/")) {
            $bad[] = "$root on {$f[4]}";
        }
    }
    if (!$seen) {
        answer('error', 'no Gluster mount in the container: the site has no wp-content on the volume');
    }
    if ($bad) {
        answer('open', 'mounted from the volume beyond the site: ' . implode(', ', $bad));
    }
    answer('denied', 'only the site\'s own directory: ' . implode(', ', $seen));
}

// ---------------------------------------------------------------- processes

/** Every process of the container with its status fields, and whether a `docker exec`
 *  started it (its parent is outside the container: PPid 0, not PID 1). */
function processes(): array
{
    $all = [];
    foreach (glob('/proc/[0-9]*') as $dir) {
        $pid = (int) basename($dir);
        $st = @file_get_contents("$dir/status");
        if ($st === false) {
            continue;
        }
        $p = ['pid' => $pid];
        foreach (explode("\n", $st) as $l) {
            if (preg_match('/^(\w+):\s*(.*)$/', $l, $m)) {
                $p[$m[1]] = $m[2];
            }
        }
        $p['uid'] = (int) explode("\t", $p['Uid'] ?? '-1')[0];
        $p['euid'] = (int) (preg_split('/\s+/', $p['Uid'] ?? '-1 -1')[1] ?? -1);
        $all[$pid] = $p;
    }
    $outside = [];
    foreach ($all as $pid => $p) {
        $q = $p;
        $seen = 0;
        while ($q && $seen++ < 64) {
            if ((int) $q['PPid'] === 0) {
                if ($q['pid'] !== 1) {
                    $outside[$pid] = true;
                }
                break;
            }
            $q = $all[(int) $q['PPid']] ?? null;
        }
    }
    foreach ($all as $pid => &$p) {
        $p['exec'] = isset($outside[$pid]);
    }
    return $all;
}

function probe_procs(array $req): void
{
    $all = processes();
    $mine = array_filter($all, fn ($p) => !$p['exec']);
    $check = $req['check'];
    $six = hexdec($req['allowed_caps'] ?? '4e3');
    $fmt = fn ($p) => "{$p['Name']}[{$p['pid']}]";
    switch ($check) {
        case 'www_caps':
            $www = array_filter($mine, fn ($p) => $p['uid'] === 33);
            $bad = array_filter($www, fn ($p) => hexdec($p['CapEff']) || hexdec($p['CapPrm']) || hexdec($p['CapAmb'] ?? '0'));
            if (!$www) {
                answer('error', 'no www-data process found');
            }
            answer($bad ? 'open' : 'denied', $bad
                ? 'capabilities held by ' . implode(', ', array_map(fn ($p) => $fmt($p) . " CapEff {$p['CapEff']}", $bad))
                : count($www) . ' www-data processes (' . implode(', ', array_unique(array_map(fn ($p) => $p['Name'], $www))) . '): CapEff, CapPrm, CapAmb all 0');
        case 'www_nnp':
            $www = array_filter($mine, fn ($p) => $p['uid'] === 33);
            $bad = array_filter($www, fn ($p) => ($p['NoNewPrivs'] ?? '0') !== '1');
            if (!$www) {
                answer('error', 'no www-data process found');
            }
            $self = $all[getmypid()] ?? null;
            answer($bad ? 'open' : 'denied', $bad
                ? 'without no_new_privs: ' . implode(', ', array_map($fmt, $bad))
                : count($www) . ' www-data processes, this php-fpm worker included (NoNewPrivs ' . ($self['NoNewPrivs'] ?? '?') . '): all NoNewPrivs 1');
        case 'caps_within':
            $bad = [];
            foreach ($mine as $p) {
                foreach (['CapEff', 'CapPrm', 'CapBnd', 'CapInh', 'CapAmb'] as $k) {
                    if (isset($p[$k]) && (hexdec($p[$k]) & ~$six)) {
                        $bad[] = $fmt($p) . " $k {$p[$k]}";
                    }
                }
            }
            answer($bad ? 'open' : 'denied', $bad
                ? 'beyond 0x' . dechex($six) . ': ' . implode(', ', array_slice($bad, 0, 6))
                : count($mine) . ' processes of the task: every capability set within 0x' . dechex($six));
        case 'seccomp':
            // Docker's default profile (mode 2, filter): no mount, unshare, keyctl, bpf…
            $bad = array_filter($mine, fn ($p) => ($p['Seccomp'] ?? '0') !== '2');
            answer($bad ? 'open' : 'denied', $bad
                ? 'without a seccomp filter: ' . implode(', ', array_map($fmt, $bad))
                : count($mine) . ' processes of the task: all under a seccomp filter (mode 2)');
        case 'root_environ':
            $root = array_filter($all, fn ($p) => $p['uid'] === 0 || $p['euid'] === 0);
            $read = [];
            $tried = [];
            foreach ($root as $p) {
                foreach (['environ', 'root/run/secrets/agent_token', 'cwd/', 'fd/'] as $what) {
                    $path = "/proc/{$p['pid']}/$what";
                    $tried[] = $path;
                    $ok = str_ends_with($what, '/') ? @scandir($path) !== false : @file_get_contents($path) !== false;
                    if ($ok) {
                        $read[] = $fmt($p) . " $what";
                    }
                }
            }
            if (!$root) {
                answer('error', 'no root process found');
            }
            answer($read ? 'open' : 'denied', $read
                ? 'readable: ' . implode(', ', array_slice($read, 0, 6))
                : count($root) . ' root processes (' . implode(', ', array_unique(array_map(fn ($p) => $p['Name'], $root))) . '): environ, root/, cwd/, fd/ all refused');
        case 'secret_scan':
            secret_scan($req['needles'], $all);
        case 'setuid':
            probe_setuid($all);
    }
    answer('error', "unknown check $check");
}

/** Where a tenant's PHP could find the agent token or the admin password. */
function secret_scan(array $needles, array $all): void
{
    $hits = [];
    $looked = 0;
    $look = function (string $where, string $text) use ($needles, &$hits, &$looked) {
        $looked++;
        foreach ($needles as $name => $value) {
            if ($value !== '' && str_contains($text, $value)) {
                $hits[] = "$name in $where";
            }
        }
    };
    $look('getenv()', json_encode(getenv()));
    $look('$_SERVER', json_encode($_SERVER));
    foreach ($all as $p) {
        foreach (['environ', 'cmdline'] as $f) {
            $t = @file_get_contents("/proc/{$p['pid']}/$f");
            if ($t !== false) {
                $look("/proc/{$p['pid']}/$f ({$p['Name']})", $t);
            }
        }
    }
    $dirs = ['/etc/wordpress', '/run', '/tmp', '/var/tmp', '/var/lib/wordpress', '/var/log', '/home', '/root', '/usr/share/wordpress/wp-content'];
    if (defined('WP_CONTENT_DIR')) {
        $dirs[] = WP_CONTENT_DIR;
    }
    foreach ($dirs as $d) {
        scan_dir($d, 0, $look);
    }
    foreach (['/readyz', '/healthz', '/metrics'] as $path) {
        $t = @file_get_contents("http://127.0.0.1:9180$path", false, stream_context_create(['http' => ['timeout' => 3, 'ignore_errors' => true]]));
        if ($t !== false) {
            $look("the agent's http://127.0.0.1:9180$path", $t);
        }
    }
    answer($hits ? 'open' : 'denied', $hits
        ? 'found: ' . implode(', ', array_unique($hits))
        : "in none of $looked readable places (environment, /proc/*/environ and cmdline, wp-config, wp-content, /run, /tmp, /var/log, the agent's loopback pages)");
}

function scan_dir(string $dir, int $depth, callable $look): void
{
    if ($depth > 4 || str_contains($dir, '/uploads')) {
        return;
    }
    $entries = @scandir($dir);
    if ($entries === false) {
        return;
    }
    foreach ($entries as $e) {
        if ($e === '.' || $e === '..') {
            continue;
        }
        $path = "$dir/$e";
        if (is_link($path)) {
            continue;
        }
        if (is_dir($path)) {
            scan_dir($path, $depth + 1, $look);
        } elseif (is_file($path) && @filesize($path) < (1 << 20)) {
            $t = @file_get_contents($path);
            if ($t !== false) {
                $look($path, $t);
            }
        }
    }
}

/** Every setuid or setgid file, started from this php-fpm worker: does the new process
 *  run with more than www-data? Its status is read after the exec (the child's Name is
 *  the binary's) and before it is reaped (a zombie keeps its credentials). */
function probe_setuid(array $all): void
{
    if (!function_exists('proc_open')) {
        answer('missing', 'proc_open is disabled: cannot start a binary from PHP');
    }
    $files = [];
    foreach (['/usr/bin', '/usr/sbin', '/usr/lib', '/usr/libexec', '/usr/local/bin', '/usr/local/sbin'] as $d) {
        find_setid($d, 0, $files);
    }
    if (!$files) {
        answer('denied', 'no setuid or setgid file in the image');
    }
    $gained = [];
    $kept = [];
    foreach ($files as $path => $mode) {
        $pipes = [];
        $proc = @proc_open([$path], [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']], $pipes);
        if (!is_resource($proc)) {
            $kept[] = basename($path) . ' (not started)';
            continue;
        }
        $pid = proc_get_status($proc)['pid'];
        $want = substr(basename($path), 0, 15);
        $st = null;
        for ($i = 0; $i < 100; $i++) {
            $t = @file_get_contents("/proc/$pid/status");
            if ($t !== false && preg_match('/^Name:\s*(\S+)/m', $t, $m) && $m[1] === $want) {
                $st = $t;
                break;
            }
            usleep(20000);
        }
        @posix_kill($pid, 9);
        foreach ($pipes as $p) {
            fclose($p);
        }
        proc_close($proc);
        if ($st === null) {
            $kept[] = basename($path) . ' (not observed)';
            continue;
        }
        preg_match('/^Uid:\s*(\d+)\s+(\d+)\s+(\d+)/m', $st, $u);
        preg_match('/^Gid:\s*(\d+)\s+(\d+)\s+(\d+)/m', $st, $g);
        $line = basename($path) . " euid {$u[2]} egid {$g[2]}";
        if ((int) $u[2] !== 33 || (int) $u[3] !== 33 || (int) $g[2] !== 33 || (int) $g[3] !== 33) {
            $gained[] = $line;
        } else {
            $kept[] = $line;
        }
    }
    if (!$gained && !array_filter($kept, fn ($k) => str_contains($k, 'euid'))) {
        answer('error', 'no setuid binary could be observed after its exec: ' . implode(', ', $kept));
    }
    answer($gained ? 'open' : 'denied', $gained
        ? 'privileges gained: ' . implode(', ', $gained)
        : 'started from php-fpm, each ran as www-data: ' . implode(', ', $kept));
}

function find_setid(string $dir, int $depth, array &$files): void
{
    if ($depth > 3) {
        return;
    }
    foreach (@scandir($dir) ?: [] as $e) {
        if ($e === '.' || $e === '..') {
            continue;
        }
        $path = "$dir/$e";
        if (is_link($path)) {
            continue;
        }
        if (is_dir($path)) {
            find_setid($path, $depth + 1, $files);
            continue;
        }
        $mode = @fileperms($path);
        if ($mode !== false && ($mode & 06000) && is_executable($path)) {
            $files[$path] = $mode;
        }
    }
}

// ----------------------------------------------------------------

set_time_limit(50);
switch ($req['kind']) {
    case 'tcp':
        probe_tcp($req);
    case 'redis':
        probe_redis($req);
    case 'phpredis':
        probe_phpredis($req);
    case 'mysql':
        probe_mysql($req);
    case 'file':
        probe_file($req);
    case 'mounts':
        probe_mounts($req);
    case 'procs':
        probe_procs($req);
}
answer('error', 'unknown probe kind ' . $req['kind']);
