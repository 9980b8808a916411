<?php
/**
 * Loads the pressdock-cache mu-plugin (argv[1]) with the WordPress functions it calls
 * stubbed, fires the hooks WordPress fires for a few edits, and prints, as JSON, the
 * request the plugin sent at shutdown for each (null: none). Run by tests/agent.rs.
 *
 * The stubs answer like WordPress with pretty permalinks on https://a.test.
 */

define('ABSPATH', __DIR__ . '/');
define('PRESSDOCK_AGENT_PURGE_URL', 'http://127.0.0.1:9999/purge');

class WP_Error
{
    public function get_error_message()
    {
        return 'stub error';
    }
}

$GLOBALS['hooks'] = array();
$GLOBALS['posts'] = array();
$GLOBALS['comments'] = array();
$GLOBALS['sent'] = array();

function add_action($hook, $cb, $priority = 10, $accepted_args = 1)
{
    $GLOBALS['hooks'][$hook][$priority][] = array($cb, $accepted_args);
    return true;
}

function do_action($hook, ...$args)
{
    if (empty($GLOBALS['hooks'][$hook])) {
        return;
    }
    ksort($GLOBALS['hooks'][$hook]);
    foreach ($GLOBALS['hooks'][$hook] as $callbacks) {
        foreach ($callbacks as list($cb, $n)) {
            call_user_func_array($cb, array_slice($args, 0, $n));
        }
    }
}

function get_post($id)
{
    $id = is_object($id) ? $id->ID : $id;
    return isset($GLOBALS['posts'][$id]) ? $GLOBALS['posts'][$id] : null;
}

function get_permalink($post)
{
    return $post->post_name === '' ? 'https://a.test/?p=' . $post->ID
        : 'https://a.test/' . $post->post_name . '/';
}

function home_url($path = '')
{
    return 'https://a.test' . $path;
}

function get_feed_link()
{
    return 'https://a.test/feed/';
}

function get_post_type_archive_link($type)
{
    return $type === 'product' ? 'https://a.test/products/' : false;
}

function is_post_type_viewable($type)
{
    return !in_array($type, array('nav_menu_item', 'revision'), true);
}

function get_object_taxonomies($type, $output)
{
    if ($type !== 'post') {
        return array();
    }
    return array(
        'category' => (object) array('name' => 'category', 'public' => true),
        'post_tag' => (object) array('name' => 'post_tag', 'public' => true),
        'internal' => (object) array('name' => 'internal', 'public' => false),
    );
}

function get_the_terms($post, $taxonomy)
{
    return isset($post->terms[$taxonomy]) ? $post->terms[$taxonomy] : false;
}

function get_term_link($term)
{
    $base = array('category' => 'category', 'post_tag' => 'tag', 'internal' => 'internal');
    return 'https://a.test/' . $base[$term->taxonomy] . '/' . $term->slug . '/';
}

function get_author_posts_url($author_id)
{
    return 'https://a.test/author/' . ($author_id == 1 ? 'ada' : 'user' . $author_id) . '/';
}

/** The REST API as WordPress 6.1 answers it; products are not in it. */
function rest_url($route = '')
{
    return 'https://a.test/wp-json' . $route;
}

function rest_get_route_for_post($post)
{
    $base = array('post' => 'posts', 'page' => 'pages');
    return isset($base[$post->post_type]) ? '/wp/v2/' . $base[$post->post_type] . '/' . $post->ID : '';
}

function rest_get_route_for_post_type_items($type)
{
    $base = array('post' => 'posts', 'page' => 'pages');
    return isset($base[$type]) ? '/wp/v2/' . $base[$type] : '';
}

function rest_get_route_for_taxonomy_items($taxonomy)
{
    $base = array('category' => 'categories', 'post_tag' => 'tags');
    return isset($base[$taxonomy]) ? '/wp/v2/' . $base[$taxonomy] : '';
}

function rest_get_route_for_term($term)
{
    $items = rest_get_route_for_taxonomy_items($term->taxonomy);
    return $items === '' ? '' : $items . '/' . $term->term_id;
}

function post_type_supports($type, $feature)
{
    return $feature === 'author' && in_array($type, array('post', 'page'), true);
}

function get_comment($id)
{
    return isset($GLOBALS['comments'][$id]) ? $GLOBALS['comments'][$id] : null;
}

function is_wp_error($x)
{
    return $x instanceof WP_Error;
}

function wp_json_encode($data)
{
    return json_encode($data);
}

function wp_remote_post($url, $args)
{
    $GLOBALS['sent'][] = array('url' => $url, 'args' => $args);
    return array('response' => array('code' => 202));
}

function wp_remote_retrieve_response_code($r)
{
    return $r['response']['code'];
}

require $argv[1];

function post($id, $name, $status, $type = 'post')
{
    $term = function ($taxonomy, $slug, $id) {
        return (object) array('taxonomy' => $taxonomy, 'slug' => $slug, 'term_id' => $id);
    };
    $GLOBALS['posts'][$id] = (object) array(
        'ID' => $id,
        'post_name' => $name,
        'post_status' => $status,
        'post_type' => $type,
        'post_author' => 1,
        'terms' => array(
            'category' => array($term('category', "caf\xc3\xa9", 3)),
            'post_tag' => array($term('post_tag', 'news', 4)),
            'internal' => array($term('internal', 'secret', 9)),
        ),
    );
    return $GLOBALS['posts'][$id];
}

/** What WordPress fires when wp_update_post() moves a post from $old to $new status. */
function update_post($id, $old, $new, $rename = null)
{
    do_action('pre_post_update', $id, array());
    $p = get_post($id);
    $p->post_status = $new;
    if ($rename !== null) {
        $p->post_name = $rename;
    }
    do_action('transition_post_status', $new, $old, $p);
    do_action('save_post', $id, $p, true);
}

$scenarios = array(
    'publish' => function () {
        post(5, 'hello-world', 'draft');
        update_post(5, 'draft', 'publish');
    },
    'draft_edit' => function () {
        post(6, 'draft-only', 'draft');
        update_post(6, 'draft', 'draft');
        do_action('save_post', 6, post(7, '', 'inherit', 'revision'), true);
    },
    'slug_change' => function () {
        post(5, 'hello-world', 'publish');
        update_post(5, 'publish', 'publish', 'hello-again');
    },
    'trash' => function () {
        post(5, 'hello-world', 'publish');
        // wp_trash_post(): the action, then the update with the "__trashed" slug.
        do_action('wp_trash_post', 5);
        update_post(5, 'publish', 'trash', 'hello-world__trashed');
        do_action('trashed_post', 5, 'publish');
    },
    'delete_published' => function () {
        post(8, 'gone', 'publish');
        do_action('before_delete_post', 8, get_post(8));
        unset($GLOBALS['posts'][8]);
        do_action('deleted_post', 8, null);
    },
    'comment' => function () {
        post(5, 'hello-world', 'publish');
        $GLOBALS['comments'][9] = (object) array('comment_ID' => 9, 'comment_post_ID' => 5,
            'comment_approved' => '1');
        do_action('transition_comment_status', 'approved', 'unapproved', get_comment(9));
        do_action('edit_comment', 9, array());
        do_action('comment_post', 9, 1, array());
    },
    'comment_pending' => function () {
        post(5, 'hello-world', 'publish');
        $GLOBALS['comments'][10] = (object) array('comment_ID' => 10, 'comment_post_ID' => 5,
            'comment_approved' => '0');
        do_action('comment_post', 10, 0, array());
        do_action('edit_comment', 10, array());
    },
    'option' => function () {
        post(5, 'hello-world', 'draft');
        update_post(5, 'draft', 'publish');
        do_action('updated_option', 'blogname', 'Old', 'New');
        update_post(5, 'publish', 'publish');
    },
    'unrelated_options' => function () {
        do_action('updated_option', '_transient_doing_cron', 1, 2);
        do_action('updated_option', 'cron', array(), array());
        do_action('added_option', '_site_transient_x', 1);
    },
    'widgets' => function () {
        do_action('updated_option', 'widget_block', array(), array());
    },
    'menu' => function () {
        do_action('wp_update_nav_menu', 3, array());
        do_action('save_post', 11, post(11, 'menu-item', 'publish', 'nav_menu_item'), true);
    },
    'theme' => function () {
        do_action('switch_theme', 'Twenty Twenty-Three', null, null);
    },
    'many' => function () {
        for ($i = 100; $i < 200; $i++) {
            post($i, 'p' . $i, 'draft');
            update_post($i, 'draft', 'publish');
        }
    },
    'product' => function () {
        post(12, 'a-shirt', 'draft', 'product');
        update_post(12, 'draft', 'publish');
    },
);

$out = array();
foreach ($scenarios as $name => $run) {
    $GLOBALS['sent'] = array();
    $run();
    do_action('shutdown');
    // A second shutdown callback run sends nothing more.
    do_action('shutdown');
    $sent = $GLOBALS['sent'];
    $out[$name] = null;
    if ($sent) {
        $out[$name] = array(
            'requests' => count($sent),
            'url' => $sent[0]['url'],
            'timeout' => $sent[0]['args']['timeout'],
            'blocking' => $sent[0]['args']['blocking'],
            'content_type' => $sent[0]['args']['headers']['Content-Type'],
            'body' => json_decode($sent[0]['args']['body'], true),
        );
    }
}
echo json_encode($out, JSON_UNESCAPED_SLASHES | JSON_PRETTY_PRINT), "\n";
