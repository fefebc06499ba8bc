/*
 * A single-node OpenSearch for search.backend: opensearch, from the Maven Central jars
 * (infra/pom.xml, profile opensearch) rather than a distribution, which is not served here.
 *
 * A distribution's bin/opensearch runs org.opensearch.bootstrap.OpenSearch, which loads the
 * modules (netty4 HTTP, analysis-common, ...) from <home>/modules, each in its own class
 * loader. Here they are on the classpath, and a Node subclass hands them in as classpath
 * plugins (what the test framework's MockNode does, without its test-only overrides). No
 * security plugin (it is not loaded at all), no bootstrap checks (those are for production
 * clusters: mmap counts, file descriptors), disk watermarks off (a shared development disk
 * is often past 90 %, and a full-disk guard on a rebuildable index only blocks writes).
 *
 * Run from source, compiled in memory by the JDK at start (no build step):
 *   java -Dlog4j2.configurationFile=infra/opensearch/log4j2.properties -cp '<jars>/opensearch/*' \
 *        FeedloopOpenSearch.java <home> <bind host> <http port> <transport port>
 * It answers on http://<bind host>:<http port> once /_cluster/health is green or yellow,
 * and closes the node (flushing its shards) on SIGTERM.
 */

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.InternalSettingsPreparer;
import org.opensearch.node.Node;
import org.opensearch.plugins.Plugin;

public final class FeedloopOpenSearch {
    // the modules a distribution would load from <home>/modules that feedloop's search needs
    private static final List<String> MODULES = List.of(
            "org.opensearch.transport.Netty4Plugin",  // HTTP and transport over netty4
            "org.opensearch.analysis.common.CommonAnalysisPlugin");  // pattern tokenizer, asciifolding, ...

    /** Node's constructor that takes classpath plugins is protected: this opens it. */
    private static final class ClasspathNode extends Node {
        ClasspathNode(Environment environment, Collection<Class<? extends Plugin>> plugins) {
            super(environment, plugins, true);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length != 4) {
            System.err.println("usage: FeedloopOpenSearch <home> <bind host> <http port> <transport port>");
            System.exit(2);
        }
        Path home = Path.of(args[0]).toAbsolutePath();
        Files.createDirectories(home.resolve("config"));
        Settings settings = Settings.builder()
                .put("path.home", home.toString())
                .put("path.data", home.resolve("data").toString())
                .put("path.logs", home.resolve("logs").toString())
                .put("cluster.name", "feedloop")
                .put("node.name", "feedloop-search")
                .put("discovery.type", "single-node")
                .put("network.host", args[1])
                .put("http.port", args[2])
                .put("transport.port", args[3])
                .put("cluster.routing.allocation.disk.threshold_enabled", false)
                .build();
        Environment environment = InternalSettingsPreparer.prepareEnvironment(
                settings, Map.of(), home.resolve("config"), () -> "feedloop-search");
        List<Class<? extends Plugin>> plugins = new ArrayList<>();
        for (String name : MODULES) {
            plugins.add(Class.forName(name).asSubclass(Plugin.class));
        }
        Node node = new ClasspathNode(environment, plugins);
        CountDownLatch closed = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                closed.countDown();
            }
        }, "feedloop-search-shutdown"));
        node.start();
        // OpenSearch's threads are daemons (its bootstrap keeps a thread of its own alive): so is this one
        closed.await();
    }
}
