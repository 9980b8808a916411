<?php
/**
 * Installs WordPress with its own installer (wp_install), run by pressdock-agent with
 * php-cli on the site's first start. Written by the agent; edits are lost.
 *
 * Input on stdin, one JSON object: abspath, host, title, admin_user, admin_email,
 * admin_password (the password never goes through argv or the environment).
 * Output on stdout, last line, one JSON object: {"result": "installed", "user_id": N} or
 * {"result": "already-installed"}. Anything else (WordPress's "database error" page, a
 * PHP error) is a failure for the agent, whatever the exit status.
 */

$in = json_decode(stream_get_contents(STDIN), true);
if (!is_array($in)) {
    fwrite(STDERR, "install.php: expected a JSON object on stdin\n");
    exit(2);
}
foreach (array('abspath', 'host', 'title', 'admin_user', 'admin_email', 'admin_password') as $k) {
    if (!isset($in[$k]) || !is_string($in[$k]) || $in[$k] === '') {
        fwrite(STDERR, "install.php: missing $k\n");
        exit(2);
    }
}

// Debian's wp-config.php picks the config file by HTTP_HOST; the agent wrote
// config-default.php, which any host reaches.
$_SERVER['HTTP_HOST'] = $in['host'];
$_SERVER['SERVER_NAME'] = $in['host'];
$_SERVER['REQUEST_URI'] = '/';
$_SERVER['SERVER_PROTOCOL'] = 'HTTP/1.1';
$_SERVER['REQUEST_METHOD'] = 'GET';

define('WP_INSTALLING', true);

// wp_install() mails the admin; there is no mail transport in the task and the platform
// hands the password out. The function is pluggable: defined here, upgrade.php skips its own.
function wp_new_blog_notification($blog_title, $blog_url, $user_id, $password)
{
}

require $in['abspath'] . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';

if (is_blog_installed()) {
    echo json_encode(array('result' => 'already-installed')), "\n";
    exit(0);
}

$result = wp_install(
    $in['title'],
    $in['admin_user'],
    $in['admin_email'],
    true,
    '',
    wp_slash($in['admin_password'])
);
if (!is_array($result) || empty($result['user_id'])) {
    fwrite(STDERR, "install.php: wp_install did not return a user\n");
    exit(1);
}
// The password is a one-time password: WordPress asks the admin to change it.
update_user_meta($result['user_id'], 'default_password_nag', true);
echo json_encode(array('result' => 'installed', 'user_id' => (int) $result['user_id'])), "\n";
