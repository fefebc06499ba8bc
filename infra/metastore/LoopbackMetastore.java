/*
 * The Hive 2.3 metastore's thrift service, bound to one address.
 *
 * HiveMetaStore.main (Hive 2.3.10, the jars pyspark ships) always listens on every
 * interface: its startMetaStore asks HiveAuthUtils.getServerSocket(null, port), and Hive
 * 2.3 has no hive.metastore.thrift.bind.host (that came with Hive 3). This launcher builds
 * the same server as startMetaStore's default path (no SASL, no SSL, setugi on: the
 * TUGIBasedProcessor with the UGI-carrying transport, the binary protocol bounded by
 * hive.metastore.server.max.message.size) on a socket bound to the given host.
 *
 * Run from source, compiled in memory by the JDK at start (no build step):
 *   java -cp <hive-site dir>:<pyspark>/jars/* LoopbackMetastore.java <host> <port>
 */

import java.net.InetSocketAddress;

import org.apache.hadoop.hive.conf.HiveConf;
import org.apache.hadoop.hive.conf.HiveConf.ConfVars;
import org.apache.hadoop.hive.metastore.HiveMetaStore;
import org.apache.hadoop.hive.metastore.IHMSHandler;
import org.apache.hadoop.hive.metastore.TServerSocketKeepAlive;
import org.apache.hadoop.hive.metastore.TSetIpAddressProcessor;
import org.apache.hadoop.hive.metastore.TUGIBasedProcessor;
import org.apache.hadoop.hive.thrift.TUGIContainingTransport;
import org.apache.thrift.TProcessor;
import org.apache.thrift.protocol.TBinaryProtocol;
import org.apache.thrift.server.TThreadPoolServer;
import org.apache.thrift.transport.TServerSocket;
import org.apache.thrift.transport.TTransportFactory;

public final class LoopbackMetastore {
    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: LoopbackMetastore <bind host> <port>");
            System.exit(2);
        }
        String host = args[0];
        int port = Integer.parseInt(args[1]);

        HiveConf.setLoadMetastoreConfig(true);
        HiveConf conf = new HiveConf(HiveMetaStore.HMSHandler.class);
        IHMSHandler handler = HiveMetaStore.newRetryingHMSHandler(
                new HiveMetaStore.HMSHandler("new db based metaserver", conf, false), conf);

        boolean setUgi = conf.getBoolVar(ConfVars.METASTORE_EXECUTE_SET_UGI);
        TProcessor processor = setUgi ? new TUGIBasedProcessor<>(handler) : new TSetIpAddressProcessor<>(handler);
        TTransportFactory transports = setUgi ? new TUGIContainingTransport.Factory() : new TTransportFactory();

        TServerSocket socket = new TServerSocket(new InetSocketAddress(host, port));
        if (conf.getBoolVar(ConfVars.METASTORE_TCP_KEEP_ALIVE)) {
            socket = new TServerSocketKeepAlive(socket);
        }
        long maxMessageSize = conf.getLongVar(ConfVars.METASTORESERVERMAXMESSAGESIZE);
        TThreadPoolServer.Args serverArgs = new TThreadPoolServer.Args(socket)
                .processor(processor)
                .transportFactory(transports)
                .protocolFactory(new TBinaryProtocol.Factory())
                .inputProtocolFactory(new TBinaryProtocol.Factory(true, true, maxMessageSize, maxMessageSize))
                .minWorkerThreads(conf.getIntVar(ConfVars.METASTORESERVERMINTHREADS))
                .maxWorkerThreads(conf.getIntVar(ConfVars.METASTORESERVERMAXTHREADS));
        TThreadPoolServer server = new TThreadPoolServer(serverArgs);
        System.out.println("Started the metastore's thrift server on " + host + ":" + port);
        server.serve();
    }
}
