<?php
/**
 * Plugin Name: Pressdock cache purge
 * Description: Tells the edge caches what changed. Installed by pressdock-agent at every start; edits are lost.
 *
 * During a request it collects the URL paths whose cached pages a change makes stale:
 * a published post (saved, updated, unpublished, trashed, deleted) gives its permalink,
 * the home page, the feed, its term archives and its author archive; a comment approved,
 * unapproved or edited gives its post; the theme, the customizer, menus, widgets and
 * site-wide options give "everything".
 *
 * The edge caches the anonymous REST API too, so a change also gives the core routes
 * that show it: the post type's collection and the post's own route, its terms'
 * collections and routes, its author's, search and oEmbed (a comment: the comments
 * collection, the comment's route and its post's, which embed replies). The paths are
 * what rest_url() gives ("/wp-json/wp/v2/posts"); a path without a query also drops
 * its query variants ("?per_page=5"), and "/" (always sent with REST routes) drops
 * every "/?rest_route=..." form, "/index.php" every "/index.php?rest_route=...". At shutdown it sends them, once and de-duplicated,
 * to the site's agent (POST http://127.0.0.1:9180/purge), which forwards them to the
 * control plane; the control plane bans them on the edge caches of every host of the site.
 *
 * Paths, not URLs: the same path is banned on every domain of the site. A path keeps its
 * query ("/?p=5"); bytes outside printable ASCII are percent-encoded.
 */

defined('ABSPATH') || exit;

final class Pressdock_Cache_Purge
{
    /** Over this many paths the agent purges everything anyway; so do we. */
    const MAX_PATHS = 100;
    const MAX_PATH_BYTES = 2048;

    /** Options that change every page (or its links); widget_* and theme_mods_* too. */
    const SITE_OPTIONS = array(
        'blogname', 'blogdescription', 'home', 'siteurl', 'permalink_structure',
        'category_base', 'tag_base', 'show_on_front', 'page_on_front', 'page_for_posts',
        'posts_per_page', 'posts_per_rss', 'rss_use_excerpt', 'date_format', 'time_format',
        'start_of_week', 'timezone_string', 'gmt_offset', 'WPLANG', 'blog_public',
        'site_icon', 'stylesheet', 'template', 'sidebars_widgets',
    );

    /** @var array<string, true> path => true, in the order found. */
    private static $paths = array();
    private static $all = false;

    public static function init()
    {
        // Before a change: the post as it is (a trashed post's slug gets "__trashed").
        add_action('pre_post_update', array(__CLASS__, 'post_id'), 10, 1);
        add_action('wp_trash_post', array(__CLASS__, 'post_id'), 10, 1);
        add_action('before_delete_post', array(__CLASS__, 'post_id'), 10, 1);
        // After it: the post as it is now.
        add_action('transition_post_status', array(__CLASS__, 'transition'), 10, 3);
        add_action('save_post', array(__CLASS__, 'saved'), 10, 2);
        add_action('trashed_post', array(__CLASS__, 'post_id'), 10, 1);
        add_action('deleted_post', array(__CLASS__, 'post_id'), 10, 1);

        add_action('transition_comment_status', array(__CLASS__, 'comment_transition'), 10, 3);
        add_action('edit_comment', array(__CLASS__, 'comment_id'), 10, 1);
        add_action('comment_post', array(__CLASS__, 'comment_new'), 10, 2);

        foreach (array('switch_theme', 'customize_save_after', 'wp_update_nav_menu',
            'wp_delete_nav_menu', 'permalink_structure_changed') as $hook) {
            add_action($hook, array(__CLASS__, 'all'), 10, 0);
        }
        add_action('updated_option', array(__CLASS__, 'option'), 10, 1);
        add_action('added_option', array(__CLASS__, 'option'), 10, 1);

        add_action('shutdown', array(__CLASS__, 'send'), 100, 0);
    }

    public static function all()
    {
        self::$all = true;
        self::$paths = array();
    }

    public static function option($name)
    {
        if (in_array($name, self::SITE_OPTIONS, true)
            || strpos($name, 'widget_') === 0 || strpos($name, 'theme_mods_') === 0) {
            self::all();
        }
    }

    public static function post_id($post_id)
    {
        $post = get_post($post_id);
        if ($post) {
            self::post($post, false);
        }
    }

    public static function transition($new_status, $old_status, $post)
    {
        if ($new_status === 'publish' || $old_status === 'publish') {
            self::post($post, true);
        }
    }

    public static function saved($post_id, $post)
    {
        if ($post && $post->post_status === 'publish') {
            self::post($post, true);
        }
    }

    /**
     * A post's pages when it is published, or when $was_changed says it just left that
     * state (its permalink is then no longer its public one: only the lists it was on).
     */
    private static function post($post, $was_changed)
    {
        if (self::$all || !is_object($post) || !self::viewable($post->post_type)) {
            return;
        }
        $published = $post->post_status === 'publish';
        if (!$published && !$was_changed) {
            // A draft or revision edited, or a post already trashed (its pages were
            // collected before): nothing public changes.
            return;
        }
        if ($published) {
            self::url(get_permalink($post));
        }
        self::url(home_url('/'));
        self::url(get_feed_link());
        if ($post->post_type !== 'post' && $post->post_type !== 'page') {
            self::url(get_post_type_archive_link($post->post_type));
        }
        foreach (get_object_taxonomies($post->post_type, 'objects') as $tax) {
            if (empty($tax->public)) {
                continue;
            }
            $terms = get_the_terms($post, $tax->name);
            if (is_array($terms)) {
                foreach ($terms as $term) {
                    self::url(get_term_link($term));
                }
            }
        }
        if ($post->post_type === 'post') {
            self::url(get_author_posts_url($post->post_author));
        }
        self::post_rest_routes($post);
    }

    /** The REST routes that list or show the post (none for a type not in the REST API). */
    private static function post_rest_routes($post)
    {
        if (!function_exists('rest_url') || !function_exists('rest_get_route_for_post')) {
            return;
        }
        // Its own route: a trashed or unpublished post's too (now 401/404).
        $route = rest_get_route_for_post($post);
        if ($route === '') {
            return;
        }
        self::rest($route);
        if (function_exists('rest_get_route_for_post_type_items')) {
            self::rest(rest_get_route_for_post_type_items($post->post_type));
        }
        if (function_exists('rest_get_route_for_term')) {
            foreach (get_object_taxonomies($post->post_type, 'objects') as $tax) {
                if (empty($tax->public)) {
                    continue;
                }
                if (function_exists('rest_get_route_for_taxonomy_items')) {
                    // Term counts change.
                    self::rest(rest_get_route_for_taxonomy_items($tax->name));
                }
                $terms = get_the_terms($post, $tax->name);
                if (is_array($terms)) {
                    foreach ($terms as $term) {
                        self::rest(rest_get_route_for_term($term));
                    }
                }
            }
        }
        if (function_exists('post_type_supports') && post_type_supports($post->post_type, 'author')) {
            // Anonymous visitors see only users with published posts.
            self::rest('/wp/v2/users');
            self::rest('/wp/v2/users/' . (int) $post->post_author);
        }
        self::rest('/wp/v2/search');
        self::rest('/oembed/1.0/embed');
    }

    /**
     * A REST route's path, with "/" and "/index.php": their bans cover the
     * "?rest_route=" forms of every route, which a path ban cannot name one by one.
     */
    private static function rest($route)
    {
        if (!is_string($route) || $route === '') {
            return;
        }
        self::url(rest_url($route));
        self::url(home_url('/'));
        self::url(home_url('/index.php'));
    }

    public static function comment_transition($new_status, $old_status, $comment)
    {
        if ($new_status === 'approved' || $old_status === 'approved') {
            self::comment_post_path($comment);
        }
    }

    public static function comment_id($comment_id)
    {
        $comment = get_comment($comment_id);
        if ($comment && (string) $comment->comment_approved === '1') {
            self::comment_post_path($comment);
        }
    }

    public static function comment_new($comment_id, $approved)
    {
        if ($approved === 1 || $approved === '1') {
            self::comment_post_path(get_comment($comment_id));
        }
    }

    private static function comment_post_path($comment)
    {
        $post = $comment ? get_post($comment->comment_post_ID) : null;
        if (!self::$all && $post && $post->post_status === 'publish' && self::viewable($post->post_type)) {
            self::url(get_permalink($post));
            if (function_exists('rest_url')) {
                self::rest('/wp/v2/comments');
                self::rest('/wp/v2/comments/' . (int) $comment->comment_ID);
                // Its post's route and collection embed the replies (`?_embed`).
                if (function_exists('rest_get_route_for_post')) {
                    self::rest(rest_get_route_for_post($post));
                }
                if (function_exists('rest_get_route_for_post_type_items')) {
                    self::rest(rest_get_route_for_post_type_items($post->post_type));
                }
            }
        }
    }

    private static function viewable($post_type)
    {
        return function_exists('is_post_type_viewable') ? is_post_type_viewable($post_type) : true;
    }

    /** Adds the path (and query) of an absolute or relative URL. */
    private static function url($url)
    {
        if (self::$all || !is_string($url) || $url === '') {
            return;
        }
        $path = self::path($url);
        if ($path === null) {
            return;
        }
        if (strlen($path) > self::MAX_PATH_BYTES) {
            self::all();
            return;
        }
        self::$paths[$path] = true;
        if (count(self::$paths) > self::MAX_PATHS) {
            self::all();
        }
    }

    /** "https://a.test/x/?p=5#c" -> "/x/?p=5"; null when it is not a URL. */
    public static function path($url)
    {
        $parts = parse_url($url);
        if ($parts === false) {
            return null;
        }
        $path = isset($parts['path']) && $parts['path'] !== '' ? $parts['path'] : '/';
        if ($path[0] !== '/') {
            return null;
        }
        if (isset($parts['query']) && $parts['query'] !== '') {
            $path .= '?' . $parts['query'];
        }
        return preg_replace_callback('/[^\x21-\x7e]/', function ($m) {
            return rawurlencode($m[0]);
        }, $path);
    }

    /** One request with everything collected; the agent answers at once (202). */
    public static function send()
    {
        if (!self::$all && !self::$paths) {
            return;
        }
        $body = array('paths' => array_keys(self::$paths), 'all' => self::$all);
        self::$paths = array();
        self::$all = false;
        $url = defined('PRESSDOCK_AGENT_PURGE_URL') ? PRESSDOCK_AGENT_PURGE_URL : 'http://127.0.0.1:9180/purge';
        $response = wp_remote_post($url, array(
            'timeout' => 2,
            'blocking' => true,
            'redirection' => 0,
            'headers' => array('Content-Type' => 'application/json'),
            'body' => wp_json_encode($body),
        ));
        $code = is_wp_error($response) ? 0 : (int) wp_remote_retrieve_response_code($response);
        if ($code !== 202) {
            $why = is_wp_error($response) ? $response->get_error_message() : 'HTTP ' . $code;
            error_log('pressdock-cache: the agent did not take the purge: ' . $why);
        }
    }
}

Pressdock_Cache_Purge::init();
