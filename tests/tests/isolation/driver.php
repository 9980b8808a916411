// Run with `php -r` inside the site's container (docker exec, as www-data): posts each probe
// of the JSON on stdin to probe.php through the site's own nginx on loopback, so that
// php-fpm (not this php-cli) runs it, and prints one JSON line per probe.
$input = json_decode(stream_get_contents(STDIN), true);
foreach ($input['probes'] as $p) {
    $ctx = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => "Content-Type: application/json\r\n",
        'content' => json_encode($p['request']),
        'timeout' => 90,
        'ignore_errors' => true,
    ]]);
    $t0 = microtime(true);
    $body = @file_get_contents($input['url'], false, $ctx);
    $status = isset($http_response_header[0]) ? $http_response_header[0] : 'no answer';
    $answer = $body === false ? null : json_decode($body, true);
    if (!is_array($answer) || !isset($answer['observed'])) {
        $answer = ['observed' => 'error', 'detail' => "probe.php answered $status: "
            . substr(preg_replace('/\s+/', ' ', (string) $body), 0, 200)];
    }
    $answer['name'] = $p['name'];
    $answer['ms'] = (int) round((microtime(true) - $t0) * 1000);
    echo json_encode($answer, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
}
